//! The OpenAPI 3.1 document of `/api/v1`, written to match what `v1` serves (paths, operation
//! ids as upstream's FastAPI generates them, security, bodies, status codes and shapes), plus a
//! minimal `/docs` page.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::Response;
use serde_json::{json, Value};

use super::http::Resp;

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

/// The document.
pub fn document() -> Value {
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
                        "responses": {"200": result("SessionResultCollection"), "401": detail(), "403": detail()}},
                "post": {"tags": ["sessions"], "summary": "Create Session", "operationId": "create_session_api_v1_sessions_post",
                         "security": auth(), "requestBody": body("SessionCreateModel"),
                         "responses": {"201": result("SessionResult"), "401": detail(), "403": detail(), "422": validation(), "503": detail()}}
            },
            "/api/v1/sessions/{id}": {
                "get": {"tags": ["sessions"], "summary": "Get Session", "operationId": "get_session_api_v1_sessions__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("SessionResult"), "401": detail(), "403": detail(), "404": detail(), "422": validation()}},
                "put": {"tags": ["sessions"], "summary": "Update Session", "operationId": "update_session_api_v1_sessions__id__put",
                        "security": auth(), "parameters": id_param(), "requestBody": body("SessionUpdateModel"),
                        "responses": {"200": result("SessionResult"), "401": detail(), "403": detail(), "404": detail(), "422": validation()}}
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
                         "responses": {"201": result("NodeResult"), "401": detail(), "403": detail(), "409": detail(), "422": validation()}}
            },
            "/api/v1/nodes/{id}": {
                "get": {"tags": ["nodes"], "summary": "Get Node", "operationId": "get_node_api_v1_nodes__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("NodeResult"), "401": detail(), "403": detail(), "404": detail(), "422": validation()}}
            },
            "/api/v1/tenants": {
                "get": {"tags": ["tenants"], "summary": "Get All Tenants", "operationId": "get_all_tenants_api_v1_tenants_get",
                        "security": auth(), "responses": {"200": result("TenantResultCollection"), "401": detail(), "403": detail()}},
                "post": {"tags": ["tenants"], "summary": "Create Tenant", "operationId": "create_tenant_api_v1_tenants_post",
                         "security": auth(), "requestBody": body("TenantCreateModel"),
                         "responses": {"201": result("TenantResult"), "401": detail(), "403": detail(), "409": detail(), "422": validation()}}
            },
            "/api/v1/tenants/{id}": {
                "get": {"tags": ["tenants"], "summary": "Get Tenant", "operationId": "get_tenant_api_v1_tenants__id__get",
                        "security": auth(), "parameters": id_param(),
                        "responses": {"200": result("TenantResult"), "401": detail(), "403": detail(), "404": detail(), "422": validation()}},
                "put": {"tags": ["tenants"], "summary": "Update Tenant", "operationId": "update_tenant_api_v1_tenants__id__put",
                        "security": auth(), "parameters": id_param(), "requestBody": body("TenantUpdateOrRetireModel"),
                        "responses": {"200": result("TenantResult"), "401": detail(), "403": detail(), "404": detail(), "422": validation()}}
            }
        },
        "components": {
            "securitySchemes": {"HTTPBasic": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "HTTPError": {"type": "object", "required": ["detail"], "properties": {"detail": {"type": "string"}}},
                "ValidationError": {"type": "object", "required": ["loc", "msg", "type"],
                    "properties": {"loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
                                   "msg": {"type": "string"}, "type": {"type": "string"}}},
                "HTTPValidationError": {"type": "object", "properties": {"detail": {"anyOf": [
                    {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}}, {"type": "string"}]}}},
                "NodeState": {"type": "string", "enum": ["unused", "provisioning", "ready", "contextualizing", "deployed", "deprovisioning", "done", "failed"]},
                "NodesSpec": {"type": "object", "required": ["quantity", "pool"],
                    "properties": {"quantity": {"type": "integer", "minimum": 1}, "pool": {"type": "string"}}},
                "SessionCreateModel": {"type": "object", "required": ["nodes_specs"],
                    "properties": {"tenant_id": nullable("integer"),
                                   "nodes_specs": {"type": "array", "items": {"$ref": "#/components/schemas/NodesSpec"}}}},
                "SessionUpdateModel": {"type": "object", "properties": {
                    "active": nullable("boolean"),
                    "expires_at": {"anyOf": [{"type": "string", "format": "date-time"},
                                             {"type": "string", "pattern": "^\\s*[+-]\\s*(\\d+\\s*w)?\\s*(\\d+\\s*d)?\\s*(\\d+\\s*h)?\\s*(\\d+\\s*m)?\\s*(\\d+\\s*s)?\\s*(\\d+\\s*ms)?\\s*$"},
                                             {"type": "null"}]}}},
                "TenantModel": {"type": "object", "properties": tenant_props},
                "NodeModel": {"type": "object", "properties": node_props},
                "SessionNodeModel": {"type": "object", "properties": node_base},
                "SessionModel": {"type": "object", "properties": session_props},
                "NodeCreateModel": {"type": "object", "required": ["hostname", "ipaddr"], "properties": {
                    "hostname": {"type": "string"}, "ipaddr": {"type": "string", "anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
                    "comment": nullable("string"), "pool": nullable("string"), "reusable": {"type": "boolean", "default": true},
                    "data": {"type": "object", "default": {}}}},
                "TenantCreateModel": {"type": "object", "required": ["name", "ssh_key"], "properties": {
                    "name": {"type": "string"}, "ssh_key": {"type": "string"}, "is_admin": {"type": "boolean", "default": false},
                    "node_quota": {"type": ["integer", "null"], "exclusiveMinimum": 0},
                    "session_lifetime": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}, {"type": "null"}]},
                    "session_lifetime_max": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}, {"type": "null"}]}}},
                "TenantUpdateOrRetireModel": {"type": "object", "properties": {
                    "active": {"type": "boolean"}, "ssh_key": nullable("string"),
                    "api_key": {"anyOf": [{"type": "string", "format": "uuid"}, {"type": "string", "enum": ["reset"]}, {"type": "null"}]},
                    "node_quota": {"type": ["integer", "null"], "exclusiveMinimum": 0},
                    "session_lifetime": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}, {"type": "null"}]},
                    "session_lifetime_max": {"anyOf": [{"type": "number", "minimum": 0}, {"type": "string"}, {"type": "null"}]}}},
                "PoolConciseModel": {"type": "object", "required": ["name", "fill-level"],
                    "properties": {"name": {"type": "string"}, "fill-level": {"type": "integer"}}},
                "PoolVerboseModel": {"type": "object", "required": ["name", "fill-level", "levels"],
                    "properties": {"name": {"type": "string"}, "fill-level": {"type": "integer"},
                                   "levels": {"type": "object", "properties": {
                                       "provisioning": {"type": "integer"}, "ready": {"type": "integer"},
                                       "contextualizing": {"type": "integer"}, "deployed": {"type": "integer"},
                                       "deprovisioning": {"type": "integer"}}}}},
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
            }
        }
    })
}

/// `/docs`: a page pointing at the document (no external assets: the network is closed).
pub fn docs_page() -> Resp {
    let html = "<!doctype html><html><head><title>duffy API</title></head><body>\
<h1>duffy REST API v1</h1><p>OpenAPI document: <a href=\"/api/v1/openapi.json\">/api/v1/openapi.json</a> \
(also at <a href=\"/openapi.json\">/openapi.json</a>).</p></body></html>";
    let mut r = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r
}
