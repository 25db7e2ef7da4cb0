//! Percent-decoding (RFC 3986 `%XX` escapes) of URL parts: API path segments, database URL
//! parameters, passwords in URLs (to mask them), query strings ([`decode_form`]). Invalid escapes are kept as they are; a result
//! that is not UTF-8 gives the input back unchanged.

/// Decode the `%XX` escapes of `s`.
pub fn decode(s: &str) -> String {
    String::from_utf8(decode_bytes(s, false)).unwrap_or_else(|_| s.to_string())
}

/// Decode an `application/x-www-form-urlencoded` part (a query string's key or value) like
/// Python's `urllib.parse.unquote_plus`: `+` is a space, bytes that are not UTF-8 become U+FFFD.
pub fn decode_form(s: &str) -> String {
    String::from_utf8_lossy(&decode_bytes(s, true)).into_owned()
}

fn decode_bytes(s: &str, plus_is_space: bool) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if plus_is_space && b[i] == b'+' {
            out.push(b' ');
            i += 1;
            continue;
        }
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::decode;

    #[test]
    fn decodes_escapes_and_keeps_the_rest() {
        assert_eq!(decode("%2Fetc%2Fca.pem"), "/etc/ca.pem");
        assert_eq!(decode("a%20b%"), "a b%");
        assert_eq!(decode("100%zz"), "100%zz");
        assert_eq!(decode("%C3%A9"), "é");
        assert_eq!(decode("%FF"), "%FF");
    }
}
