//! PyYAML's emitter (`yaml/emitter.py`, default `yaml.dump` settings: block style, sort_keys,
//! indent 2, width 80, allow_unicode False), restricted to JSON values: a faithful port of the
//! parts these documents reach, so that the bytes equal upstream's `duffy client --format yaml`.
//! [`dump`] is the one YAML writer of every `--format yaml` (`duffy client` and `duffy admin`).

use std::sync::LazyLock;

use serde_json::Value;

use super::python_float;

/// `yaml.dump(v)` of PyYAML (ends with a newline).
pub fn dump(v: &Value) -> String {
    let mut e = YamlEmitter::default();
    e.document(v);
    e.out
}

// ---------------------------------------------------------------------------------------------

static RE_BOOL: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$",
    )
    .expect("regex")
});
static RE_FLOAT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$",
    )
    .expect("regex")
});
static RE_INT: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[-+]?0b[0-1_]+|[-+]?0[0-7_]+|[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?[1-9][0-9_]*(?::[0-5]?[0-9])+)$",
    )
    .expect("regex")
});
static RE_NULL: LazyLock<regex::Regex> =
    LazyLock::new(|| regex::Regex::new(r"^(?:~|null|Null|NULL|)$").expect("regex"));
static RE_TIMESTAMP: LazyLock<regex::Regex> = LazyLock::new(|| {
    regex::Regex::new(
        r"^(?:[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]|[0-9][0-9][0-9][0-9]-[0-9][0-9]?-[0-9][0-9]?(?:[Tt]|[ \t]+)[0-9][0-9]?:[0-9][0-9]:[0-9][0-9](?:\.[0-9]*)?(?:[ \t]*(?:Z|[-+][0-9][0-9]?(?::[0-9][0-9])?))?)$",
    )
    .expect("regex")
});

/// Would this plain scalar be read back as something other than a string (PyYAML's YAML 1.1
/// implicit resolvers)? Python's `$` also matches before a final newline.
fn resolves_to_non_str(value: &str) -> bool {
    if value.is_empty() {
        return true; // null
    }
    let v = value.strip_suffix('\n').unwrap_or(value);
    let first = value.chars().next().unwrap_or(' ');
    let by_first = |chars: &str| chars.contains(first);
    (by_first("yYnNtTfFoO") && RE_BOOL.is_match(v))
        || (by_first("-+0123456789.") && RE_FLOAT.is_match(v))
        || (by_first("-+0123456789") && RE_INT.is_match(v))
        || (first == '<' && v == "<<")
        || (by_first("~nN") && RE_NULL.is_match(v))
        || (by_first("0123456789") && RE_TIMESTAMP.is_match(v))
        || (first == '=' && v == "=")
}

#[derive(Debug, Default, Clone, Copy)]
struct Analysis {
    empty: bool,
    multiline: bool,
    allow_flow_plain: bool,
    allow_block_plain: bool,
    allow_single_quoted: bool,
}

fn is_break(c: char) -> bool {
    matches!(c, '\n' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn is_space_or_break(c: char) -> bool {
    matches!(
        c,
        '\0' | ' ' | '\t' | '\r' | '\n' | '\u{85}' | '\u{2028}' | '\u{2029}'
    )
}

fn analyze_scalar(s: &[char]) -> Analysis {
    if s.is_empty() {
        return Analysis {
            empty: true,
            multiline: false,
            allow_flow_plain: false,
            allow_block_plain: true,
            allow_single_quoted: true,
        };
    }
    let mut block_indicators = false;
    let mut flow_indicators = false;
    let mut line_breaks = false;
    let mut special_characters = false;
    let mut leading_space = false;
    let mut leading_break = false;
    let mut trailing_space = false;
    let mut trailing_break = false;
    let mut break_space = false;
    let mut space_break = false;
    let starts = |p: &str| s.iter().take(3).collect::<String>() == p;
    if starts("---") || starts("...") {
        block_indicators = true;
        flow_indicators = true;
    }
    let mut preceded_by_whitespace = true;
    let mut followed_by_whitespace = s.len() == 1 || is_space_or_break(s[1]);
    let mut previous_space = false;
    let mut previous_break = false;
    let n = s.len();
    let mut index = 0;
    while index < n {
        let ch = s[index];
        if index == 0 {
            if "#,[]{}&*!|>'\"%@`".contains(ch) {
                flow_indicators = true;
                block_indicators = true;
            }
            if ch == '?' || ch == ':' {
                flow_indicators = true;
                if followed_by_whitespace {
                    block_indicators = true;
                }
            }
            if ch == '-' && followed_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        } else {
            if ",?[]{}".contains(ch) {
                flow_indicators = true;
            }
            if ch == ':' {
                flow_indicators = true;
                if followed_by_whitespace {
                    block_indicators = true;
                }
            }
            if ch == '#' && preceded_by_whitespace {
                flow_indicators = true;
                block_indicators = true;
            }
        }
        if is_break(ch) {
            line_breaks = true;
        }
        if !(ch == '\n' || ('\x20'..='\x7e').contains(&ch)) {
            // unicode characters are special (allow_unicode is False), and so is the rest
            special_characters = true;
        }
        if ch == ' ' {
            if index == 0 {
                leading_space = true;
            }
            if index == n - 1 {
                trailing_space = true;
            }
            if previous_break {
                break_space = true;
            }
            previous_space = true;
            previous_break = false;
        } else if is_break(ch) {
            if index == 0 {
                leading_break = true;
            }
            if index == n - 1 {
                trailing_break = true;
            }
            if previous_space {
                space_break = true;
            }
            previous_space = false;
            previous_break = true;
        } else {
            previous_space = false;
            previous_break = false;
        }
        index += 1;
        preceded_by_whitespace = is_space_or_break(ch);
        followed_by_whitespace = index + 1 >= n || is_space_or_break(s[index + 1]);
    }
    let mut a = Analysis {
        empty: false,
        multiline: line_breaks,
        allow_flow_plain: true,
        allow_block_plain: true,
        allow_single_quoted: true,
    };
    if leading_space || leading_break || trailing_space || trailing_break {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if break_space {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if space_break || special_characters {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
        a.allow_single_quoted = false;
    }
    if line_breaks {
        a.allow_flow_plain = false;
        a.allow_block_plain = false;
    }
    if flow_indicators {
        a.allow_flow_plain = false;
    }
    if block_indicators {
        a.allow_block_plain = false;
    }
    a
}

const BEST_INDENT: usize = 2;
const BEST_WIDTH: usize = 80;

#[derive(Default, Clone, Copy)]
struct Ctx {
    root: bool,
    mapping: bool,
    simple_key: bool,
}

struct YamlEmitter {
    out: String,
    indents: Vec<Option<usize>>,
    indent: Option<usize>,
    flow_level: usize,
    column: usize,
    whitespace: bool,
    indention: bool,
    open_ended: bool,
}

impl Default for YamlEmitter {
    fn default() -> Self {
        YamlEmitter {
            out: String::new(),
            indents: Vec::new(),
            indent: None,
            flow_level: 0,
            column: 0,
            whitespace: true,
            indention: true,
            open_ended: false,
        }
    }
}

impl YamlEmitter {
    fn document(&mut self, v: &Value) {
        self.node(
            v,
            Ctx {
                root: true,
                ..Ctx::default()
            },
        );
        // document end
        self.write_indent();
        // stream end
        if self.open_ended {
            self.write_indicator("...", true, false, false);
            self.write_indent();
        }
    }

    fn increase_indent(&mut self, flow: bool, indentless: bool) {
        self.indents.push(self.indent);
        match self.indent {
            None => self.indent = Some(if flow { BEST_INDENT } else { 0 }),
            Some(i) if !indentless => self.indent = Some(i + BEST_INDENT),
            Some(_) => {}
        }
    }

    fn pop_indent(&mut self) {
        self.indent = self.indents.pop().flatten();
    }

    fn node(&mut self, v: &Value, ctx: Ctx) {
        match v {
            Value::Null => self.scalar("null", false, ctx),
            Value::Bool(b) => self.scalar(if *b { "true" } else { "false" }, false, ctx),
            Value::Number(n) => {
                let text = if n.is_f64() {
                    // represent_float: repr().lower(), '.0' added before a bare exponent
                    let f = n.as_f64().unwrap_or(0.0);
                    if f.is_nan() {
                        ".nan".to_string()
                    } else if f.is_infinite() {
                        if f > 0.0 { ".inf" } else { "-.inf" }.to_string()
                    } else {
                        let r = python_float(f).to_lowercase();
                        if !r.contains('.') && r.contains('e') {
                            r.replacen('e', ".0e", 1)
                        } else {
                            r
                        }
                    }
                } else {
                    n.to_string()
                };
                self.scalar(&text, false, ctx)
            }
            Value::String(s) => self.scalar(s, true, ctx),
            Value::Array(items) => {
                if self.flow_level > 0 || items.is_empty() {
                    self.write_indicator("[", true, true, false);
                    // an empty flow sequence: nothing inside
                    self.write_indicator("]", false, false, false);
                } else {
                    let indentless = ctx.mapping && !self.indention;
                    self.increase_indent(false, indentless);
                    for item in items {
                        self.write_indent();
                        self.write_indicator("-", true, false, true);
                        self.node(item, Ctx::default());
                    }
                    self.pop_indent();
                }
            }
            Value::Object(m) => {
                if self.flow_level > 0 || m.is_empty() {
                    self.write_indicator("{", true, true, false);
                    self.write_indicator("}", false, false, false);
                } else {
                    self.increase_indent(false, false);
                    let mut keys: Vec<&String> = m.keys().collect();
                    keys.sort();
                    for k in keys {
                        self.write_indent();
                        let chars: Vec<char> = k.chars().collect();
                        let a = analyze_scalar(&chars);
                        // check_simple_key: the prepared tag `!!str` counts too
                        let simple = chars.len() + 5 < 128 && !a.empty && !a.multiline;
                        let key = Value::String(k.clone());
                        if simple {
                            self.node(
                                &key,
                                Ctx {
                                    mapping: true,
                                    simple_key: true,
                                    ..Ctx::default()
                                },
                            );
                            self.write_indicator(":", false, false, false);
                        } else {
                            self.write_indicator("?", true, false, true);
                            self.node(
                                &key,
                                Ctx {
                                    mapping: true,
                                    ..Ctx::default()
                                },
                            );
                            self.write_indent();
                            self.write_indicator(":", true, false, true);
                        }
                        self.node(
                            &m[k],
                            Ctx {
                                mapping: true,
                                ..Ctx::default()
                            },
                        );
                    }
                    self.pop_indent();
                }
            }
        }
    }

    /// `is_str`: a string (plain only when it reads back as a string); otherwise the text of a
    /// null/bool/number, which always resolves to its own type.
    fn scalar(&mut self, text: &str, is_str: bool, ctx: Ctx) {
        self.increase_indent(true, false);
        let chars: Vec<char> = text.chars().collect();
        let a = analyze_scalar(&chars);
        let implicit_plain = !is_str || !resolves_to_non_str(text);
        let style = if implicit_plain
            && !(ctx.simple_key && (a.empty || a.multiline))
            && ((self.flow_level > 0 && a.allow_flow_plain)
                || (self.flow_level == 0 && a.allow_block_plain))
        {
            ' '
        } else if a.allow_single_quoted && !(ctx.simple_key && a.multiline) {
            '\''
        } else {
            '"'
        };
        let split = !ctx.simple_key;
        match style {
            '"' => self.write_double_quoted(&chars, split),
            '\'' => self.write_single_quoted(&chars, split),
            _ => self.write_plain(&chars, split, ctx.root),
        }
        self.pop_indent();
    }

    fn write(&mut self, s: &str) {
        self.column += s.chars().count();
        self.out.push_str(s);
    }

    fn write_chars(&mut self, s: &[char]) {
        self.column += s.len();
        self.out.extend(s.iter());
    }

    fn write_indicator(
        &mut self,
        indicator: &str,
        need_whitespace: bool,
        whitespace: bool,
        indention: bool,
    ) {
        if !self.whitespace && need_whitespace {
            self.write(" ");
        }
        self.write(indicator);
        self.whitespace = whitespace;
        self.indention = self.indention && indention;
        self.open_ended = false;
    }

    fn write_indent(&mut self) {
        let indent = self.indent.unwrap_or(0);
        if !self.indention || self.column > indent || (self.column == indent && !self.whitespace) {
            self.write_line_break(None);
        }
        if self.column < indent {
            self.whitespace = true;
            let pad = " ".repeat(indent - self.column);
            self.write(&pad);
        }
    }

    fn write_line_break(&mut self, data: Option<char>) {
        self.whitespace = true;
        self.indention = true;
        self.column = 0;
        self.out.push(data.unwrap_or('\n'));
    }

    fn write_plain(&mut self, text: &[char], split: bool, root: bool) {
        if root {
            self.open_ended = true;
        }
        if text.is_empty() {
            return;
        }
        if !self.whitespace {
            self.write(" ");
        }
        self.whitespace = false;
        self.indention = false;
        let mut spaces = false;
        let mut breaks = false;
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end && self.column > BEST_WIDTH && split {
                        self.write_indent();
                        self.whitespace = false;
                        self.indention = false;
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if text[start] == '\n' {
                        self.write_line_break(None);
                    }
                    for &br in &text[start..end] {
                        self.write_line_break(if br == '\n' { None } else { Some(br) });
                    }
                    self.write_indent();
                    self.whitespace = false;
                    self.indention = false;
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c)) {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
    }

    fn write_single_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("'", true, false, false);
        let mut spaces = false;
        let mut breaks = false;
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            if spaces {
                if ch != Some(' ') {
                    if start + 1 == end
                        && self.column > BEST_WIDTH
                        && split
                        && start != 0
                        && end != text.len()
                    {
                        self.write_indent();
                    } else {
                        self.write_chars(&text[start..end]);
                    }
                    start = end;
                }
            } else if breaks {
                if !ch.is_some_and(is_break) {
                    if text[start] == '\n' {
                        self.write_line_break(None);
                    }
                    for &br in &text[start..end] {
                        self.write_line_break(if br == '\n' { None } else { Some(br) });
                    }
                    self.write_indent();
                    start = end;
                }
            } else if ch.is_none_or(|c| c == ' ' || is_break(c) || c == '\'') && start < end {
                self.write_chars(&text[start..end]);
                start = end;
            }
            if ch == Some('\'') {
                self.write("''");
                start = end + 1;
            }
            if let Some(c) = ch {
                spaces = c == ' ';
                breaks = is_break(c);
            }
            end += 1;
        }
        self.write_indicator("'", false, false, false);
    }

    fn write_double_quoted(&mut self, text: &[char], split: bool) {
        self.write_indicator("\"", true, false, false);
        let (mut start, mut end) = (0usize, 0usize);
        while end <= text.len() {
            let ch = text.get(end).copied();
            let special = match ch {
                None => true,
                Some(c) => {
                    matches!(
                        c,
                        '"' | '\\' | '\u{85}' | '\u{2028}' | '\u{2029}' | '\u{feff}'
                    ) || !('\x20'..='\x7e').contains(&c)
                }
            };
            if special {
                if start < end {
                    self.write_chars(&text[start..end]);
                    start = end;
                }
                if let Some(c) = ch {
                    let data = match c {
                        '\0' => "\\0".to_string(),
                        '\x07' => "\\a".to_string(),
                        '\x08' => "\\b".to_string(),
                        '\x09' => "\\t".to_string(),
                        '\x0a' => "\\n".to_string(),
                        '\x0b' => "\\v".to_string(),
                        '\x0c' => "\\f".to_string(),
                        '\x0d' => "\\r".to_string(),
                        '\x1b' => "\\e".to_string(),
                        '"' => "\\\"".to_string(),
                        '\\' => "\\\\".to_string(),
                        '\u{85}' => "\\N".to_string(),
                        '\u{a0}' => "\\_".to_string(),
                        '\u{2028}' => "\\L".to_string(),
                        '\u{2029}' => "\\P".to_string(),
                        c if (c as u32) <= 0xff => format!("\\x{:02X}", c as u32),
                        c if (c as u32) <= 0xffff => format!("\\u{:04X}", c as u32),
                        c => format!("\\U{:08X}", c as u32),
                    };
                    self.write(&data);
                    start = end + 1;
                }
            }
            if 0 < end
                && end + 1 < text.len()
                && (ch == Some(' ') || start >= end)
                && self.column as isize + end as isize - start as isize > BEST_WIDTH as isize
                && split
            {
                let mut data: String = text[start.min(end)..end].iter().collect();
                data.push('\\');
                if start < end {
                    start = end;
                }
                self.write(&data);
                self.write_indent();
                self.whitespace = false;
                self.indention = false;
                if text[start] == ' ' {
                    self.write("\\");
                }
            }
            end += 1;
        }
        self.write_indicator("\"", false, false, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn yaml_like_pyyaml() {
        let v = json!({
            "b": [{"y": 1, "x": null}, [1, 2], [], {}],
            "a": {"t": "2026-11-25T17:06:42.317916Z", "s": "it's", "n": "123", "y": "yes",
                  "e": "", "u": "é", "c": "a: b", "h": "#x", "ok": "plain text"},
        });
        assert_eq!(
            dump(&v),
            "a:\n  c: 'a: b'\n  e: ''\n  h: '#x'\n  n: '123'\n  ok: plain text\n  s: it's\n  t: '2026-11-25T17:06:42.317916Z'\n  u: \"\\xE9\"\n  y: 'yes'\nb:\n- x: null\n  y: 1\n- - 1\n  - 2\n- []\n- {}\n"
        );
    }
}
