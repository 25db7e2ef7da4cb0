//! The OpenAPI 3.1 document of `/api/v1`, written to match what `v1` serves (paths, operation
//! ids as upstream's FastAPI generates them, security, bodies, status codes and shapes), plus a
//! minimal `/docs` page.

use bytes::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use super::http::Resp;
use crate::state::NodeState;

fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

fn detail() -> Value {
    json!({"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}})
}

fn validation() -> Value {
    json!({"description": "Validation Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPValidationError"}}}})
}

fn result(schema: &str) -> Value {
    json!({"description": "Successful Response", "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn body(schema: &str) -> Value {
    json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}})
}

fn id_param() -> Value {
    json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "title": "Id"}}])
}

fn auth() -> Value {
    json!([{"HTTPBasic": []}])
}

/// Regex of the parts of upstream's durations (compat spec §3.1): `[N w] [N d] [N h] [N m]
/// [N s] [N ms]`, in this order, case-insensitive, at least one.
fn duration_parts() -> String {
    const UNITS: [&str; 6] = ["[wW]", "[dD]", "[hH]", "[mM]", "[sS]", "[mM][sS]"];
    let part = |u: &str| format!("\\d+\\s*{u}");
    let alternatives: Vec<String> = (0..UNITS.len())
        .map(|first| {
            let mut alt = part(UNITS[first]);
            for u in &UNITS[first + 1..] {
                alt.push_str(&format!("(\\s*{})?", part(u)));
            }
            alt
        })
        .collect();
    format!("({})", alternatives.join("|"))
}

/// The document.
pub fn document() -> Value {
    let level_props: serde_json::Map<String, Value> = NodeState::LEVELS
        .iter()
        .map(|s| (s.as_str().to_owned(), json!({"type": "integer"})))
        .collect();
    let timestamps = json!({
        "retired_at": {"type": ["string", "null"], "format": "date-time"},
        "active": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"}
    });
    let mut tenant_props = timestamps.as_object().cloned().unwrap_or_default();
    for (k, v) in [
        ("name", json!({"type": "string"})),
        ("is_admin", json!({"type": "boolean"})),
        ("ssh_key", json!({"type": "string"})),
        ("node_quota", nullable("integer")),
        ("session_lifetime", nullable("number")),
        ("session_lifetime_max", nullable("number")),
        ("id", json!({"type": "integer"})),
        ("effective_node_quota", nullable("integer")),
        ("effective_session_lifetime", nullable("number")),
        ("effective_session_lifetime_max", nullable("number")),
        ("api_key", nullable("string")),
    ] {
        tenant_props.insert(k.into(), v);
    }
    let node_base = json!({
        "hostname": nullable("string"), "ipaddr": nullable("string"), "comment": nullable("string"),
        "pool": nullable("string"), "reusable": {"type": "boolean"}, "data": {"type": "object"},
        "id": {"type": "integer"},
        "state": {"anyOf": [{"$ref": "#/components/schemas/NodeState"}, {"type": "null"}]}
    });
    let mut node_props = timestamps.as_object().cloned().unwrap_or_default();
    node_props.extend(node_base.as_object().cloned().unwrap_or_default());
    let mut session_props = timestamps.as_object().cloned().unwrap_or_default();
    for (k, v) in [
        ("id", json!({"type": "integer"})),
        (
            "expires_at",
            json!({"type": ["string", "null"], "format": "date-time"}),
        ),
        (
            "tenant",
            json!({"$ref": "#/components/schemas/TenantModel"}),
        ),
        ("data", json!({"type": "object"})),
        (
            "nodes",
            json!({"type": "array", "items": {"$ref": "#/components/schemas/SessionNodeModel"}}),
        ),
    ] {
        session_props.insert(k.into(), v);
    }
    let action = |a: &str| json!({"type": "string", "enum": [a]});
    // every property but `api_key` (only in create/update responses) is always present
    let required = |props: &serde_json::Map<String, Value>| -> Value {
        json!(props.keys().filter(|k| *k != "api_key").collect::<Vec<_>>())
    };
    let tenant_required = required(&tenant_props);
    let node_required = required(&node_props);
    let session_node_required = required(node_base.as_object().expect("object"));
    let session_required = required(&session_props);
    let update_keys = [
        "ssh_key",
        "api_key",
        "node_quota",
        "session_lifetime",
        "session_lifetime_max",
    ];
    let lifetime = json!({"anyOf": [
        {"type": "number", "minimum": 0, "maximum": crate::tenant::MAX_LIFETIME.as_secs()},
        {"type": "string", "description": "a duration like `6h`, `1h30m`, `2w3d` or a number of seconds",
         "pattern": format!("^\\s*\\+?(\\d+|\\d+\\.\\d*|\\.\\d+|\\s*{})\\s*$", duration_parts())},
        {"type": "null"}]});
    let quota = json!({"type": ["integer", "null"], "exclusiveMinimum": 0, "maximum": i32::MAX});
    let mut schemas = json!({
                "HTTPError": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
                "ValidationError": {"type": "object", "required": ["loc", "msg", "type"],
                    "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                                   "msg": {"type": "string"}, "type": {"type": "string"}}},
                "HTTPValidationError": {"type": "object", "properties": {"detail": {"anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}, {"type": "string"}]}}},
                "NodeState": {"type": "string", "enum": NodeState::NAMES},
                "NodesSpec": {"type": "object", "required": ["quantity", "pool"],
                    "properties": {"quantity": {"type": "integer", "minimum": 1, "maximum": i32::MAX}, "pool": {"type": "string"}}},
                "SessionCreateModel": {"type": "object", "required": ["nodes_specs"],
                    "properties": {"tenant_id": nullable("integer"),
                                   "nodes_specs": {"type": "array", "items": {"$ref": "#/components/schemas/NodesSpec"}}}},
                "SessionUpdateModel": {"type": "object", "properties": {
                    "active": nullable("boolean"),
                    "expires_at": {"anyOf": [{"type": "string", "format": "date-time"},
                                             {"type": "string", "pattern": format!("^\\s*[+-]\\s*{}\\s*$", duration_parts())},
                                             {"type": "null"}]}}}
    });
    let more = json!({
                "TenantModel": {"type": "object", "required": tenant_required, "properties": tenant_props},
                "NodeModel": {"type": "object", "required": node_required, "properties": node_props},
                "SessionNodeModel": {"type": "object", "required": session_node_required, "properties": node_base},
                "SessionModel": {"type": "object", "required": session_required, "properties": session_props},
                "NodeCreateModel": {"type": "object", "required": ["hostname", "ipaddr"], "properties": {
                    "hostname": {"type": "string"}, "ipaddr": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                    "comment": nullable("string"), "pool": nullable("string"), "reusable": {"type": "boolean", "default": true},
                    "data": {"type": "object", "default": {}}}},
                "TenantCreateModel": {"type": "object", "required": ["name", "ssh_key"], "properties": {
                    "name": {"type": "string", "pattern": "^[^:\\s\\x00-\\x1f\\x7f-\\x9f]+$",
                             "description": "HTTP Basic user name: no `:`, whitespace or control characters, at most 255 bytes"},
                    "ssh_key": {"type": "string", "description": "OpenSSH public key(s), one per line"},
                    "is_admin": {"type": ["boolean", "null"], "default": false},
                    "node_quota": quota,
                    "session_lifetime": lifetime,
                    "session_lifetime_max": lifetime}},
                "TenantUpdateModel": {"type": "object",
                    "anyOf": update_keys.iter().map(|k| json!({"required": [k]})).collect::<Vec<_>>(),
                    "properties": {
                        "ssh_key": nullable("string"),
                        "api_key": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "string", "enum": ["reset"]}, {"type": "null"}]},
                        "node_quota": quota,
                        "session_lifetime": lifetime,
                        "session_lifetime_max": lifetime}},
                "TenantRetireModel": {"type": "object", "required": ["active"], "properties": {"active": {"type": "boolean"}}},
                "TenantUpdateOrRetireModel": {"anyOf": [
                    {"$ref": "#/components/schemas/TenantUpdateModel"},
                    {"$ref": "#/components/schemas/TenantRetireModel"}]},
                "PoolConciseModel": {"type": "object", "required": ["name", "fill-level"],
                    "properties": {"name": {"type": "string"}, "fill-level": {"type": "integer"}}},
                "PoolVerboseModel": {"type": "object", "required": ["name", "fill-level", "levels"],
                    "properties": {"name": {"type": "string"}, "fill-level": {"type": "integer"},
                                   "levels": {"type": "object", "properties": level_props}}},
                "SessionResult": {"type": "object", "required": ["action", "session"],
                    "properties": {"action": {"type": "string"}, "session": {"$ref": "#/components/schemas/SessionModel"}}},
                "SessionResultCollection": {"type": "object", "required": ["action", "sessions"],
                    "properties": {"action": action("get"), "sessions": {"type": "array", "items": {"$ref": "#/components/schemas/SessionModel"}}}},
                "PoolResult": {"type": "object", "required": ["action", "pool"],
                    "properties": {"action": action("get"), "pool": {"$ref": "#/components/schemas/PoolVerboseModel"}}},
                "PoolResultCollection": {"type": "object", "required": ["action", "pools"],
                    "properties": {"action": action("get"), "pools": {"type": "array", "items": {"$ref": "#/components/schemas/PoolConciseModel"}}}},
                "NodeResult": {"type": "object", "required": ["action", "node"],
                    "properties": {"action": {"type": "string"}, "node": {"$ref": "#/components/schemas/NodeModel"}}},
                "NodeResultCollection": {"type": "object", "required": ["action", "nodes"],
                    "properties": {"action": action("get"), "nodes": {"type": "array", "items": {"$ref": "#/components/schemas/NodeModel"}}}},
                "TenantResult": {"type": "object", "required": ["action", "tenant"],
                    "properties": {"action": {"type": "string"}, "tenant": {"$ref": "#/components/schemas/TenantModel"}}},
                "TenantResultCollection": {"type": "object", "required": ["action", "tenants"],
                    "properties": {"action": action("get"), "tenants": {"type": "array", "items": {"$ref": "#/components/schemas/TenantModel"}}}}
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut schemas, more) {
        a.extend(b);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Duffy", "version": crate::UPSTREAM_VERSION,
                 "description": "duffy: CentOS CI node provisioner (Duffy v3 compatible API)",
                 "contact": {"name": "CentOS CI", "email": "ci-sysadmin@centos.org"}},
        "tags": [{"name": "sessions"}, {"name": "pools"}, {"name": "nodes"}, {"name": "tenants"}],
        "paths": {
            "/api/v1/sessions": {
                "get": {"tags": ["sessions"], "summary": "Get All Sessions", "operationId": "get_all_sessions_api_v1_sessions_get",
                        "security": [{"HTTPBasic": []}, {}],
                        "responses": {"200": result("SessionResultCollection"), "401": detail(), "429": detail(), "403": detail()}},
                "post": {"tags": ["sessions"], "summary": "Create Session", "operationId": "create_session_api_v1_sessions_post",
                         "security": auth(), "requestBody": body("SessionCreateModel"),
                         "responses": {"201": result("SessionResult"), "401": detail(), "429": detail(), "403": detail(), "422": validation(), "503": detail()}}
            },
            "/api/v1/sessions/{id}": {
                "get": {"tags": ["sessions"], "summary": "Get Session", "operationId": "get_session_api_v1_sessions__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("SessionResult"), "401": detail(), "429": detail(), "403": detail(), "404": detail(), "422": validation()}},
                "put": {"tags": ["sessions"], "summary": "Update Session", "operationId": "update_session_api_v1_sessions__id__put",
                        "security": auth(), "parameters": id_param(), "requestBody": body("SessionUpdateModel"),
                        "responses": {"200": result("SessionResult"), "401": detail(), "429": detail(), "403": detail(), "404": detail(), "422": validation()}}
            },
            "/api/v1/pools": {
                "get": {"tags": ["pools"], "summary": "Get All Pools", "operationId": "get_all_pools_api_v1_pools_get",
                        "responses": {"200": result("PoolResultCollection")}}
            },
            "/api/v1/pools/{name}": {
                "get": {"tags": ["pools"], "summary": "Get Pool", "operationId": "get_pool_api_v1_pools__name__get",
                        "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "title": "Name"}}],
                        "responses": {"200": result("PoolResult"), "404": detail(), "422": validation()}}
            },
            "/api/v1/nodes": {
                "get": {"tags": ["nodes"], "summary": "Get All Nodes", "operationId": "get_all_nodes_api_v1_nodes_get",
                        "responses": {"200": result("NodeResultCollection")}},
                "post": {"tags": ["nodes"], "summary": "Create Node", "operationId": "create_node_api_v1_nodes_post",
                         "security": auth(), "requestBody": body("NodeCreateModel"),
                         "responses": {"201": result("NodeResult"), "401": detail(), "429": detail(), "403": detail(), "409": detail(), "422": validation()}}
            },
            "/api/v1/nodes/{id}": {
                "get": {"tags": ["nodes"], "summary": "Get Node", "operationId": "get_node_api_v1_nodes__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("NodeResult"), "401": detail(), "429": detail(), "403": detail(), "404": detail(), "422": validation()}}
            },
            "/api/v1/tenants": {
                "get": {"tags": ["tenants"], "summary": "Get All Tenants", "operationId": "get_all_tenants_api_v1_tenants_get",
                        "security": auth(), "responses": {"200": result("TenantResultCollection"), "401": detail(), "429": detail(), "403": detail()}},
                "post": {"tags": ["tenants"], "summary": "Create Tenant", "operationId": "create_tenant_api_v1_tenants_post",
                         "security": auth(), "requestBody": body("TenantCreateModel"),
                         "responses": {"201": result("TenantResult"), "401": detail(), "429": detail(), "403": detail(), "409": detail(), "422": validation()}}
            },
            "/api/v1/tenants/{id}": {
                "get": {"tags": ["tenants"], "summary": "Get Tenant", "operationId": "get_tenant_api_v1_tenants__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("TenantResult"), "401": detail(), "429": detail(), "403": detail(), "404": detail(), "422": validation()}},
                "put": {"tags": ["tenants"], "summary": "Update Tenant", "operationId": "update_tenant_api_v1_tenants__id__put",
                        "security": auth(), "parameters": id_param(), "requestBody": body("TenantUpdateOrRetireModel"),
                        "responses": {"200": result("TenantResult"), "401": detail(), "429": detail(), "403": detail(), "404": detail(), "422": validation()}}
            }
        },
        "components": {
            "securitySchemes": {"HTTPBasic": {"type": "http", "scheme": "basic"}},
            "schemas": schemas
        }
    })
}

/// `/docs`: a page pointing at the document (no external assets: the network is closed).
pub fn docs_page() -> Resp {
    let html = "<!doctype html><html><head><title>duffy API</title></head><body>\
<h1>duffy REST API v1</h1><p>OpenAPI document: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a> \
(also at <a href=\"/openapi.json\">/openapi.json</a>).</p></body></html>";
    let mut r = Response::new(super::http::full(Bytes::from_static(html.as_bytes())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
