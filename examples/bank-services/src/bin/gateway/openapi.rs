//! The OpenAPI document of the gateway's routes.

use axum::Json;
use serde_json::json;

/// The OpenAPI 3.1 document of the routes.
pub async fn openapi() -> Json<serde_json::Value> {
    let problem = json!({ "description": "a problem (RFC 9457)", "content": { "application/problem+json": {} } });
    let key = json!({ "name": "Idempotency-Key", "in": "header", "required": true, "schema": { "type": "string", "maxLength": 255 } });
    let id =
        json!({ "name": "id", "in": "path", "required": true, "schema": { "type": "string" } });
    let wait = [
        json!({ "name": "min_version", "in": "query", "schema": { "type": "integer", "minimum": 0 } }),
        json!({ "name": "timeout_ms", "in": "query", "schema": { "type": "integer", "maximum": 30000 } }),
    ];
    let amount = json!({ "required": true, "content": { "application/json": { "schema": {
        "type": "object", "required": ["amount"], "properties": { "amount": { "type": "integer", "minimum": 1 } } } } } });
    let command = |summary: &str, body: serde_json::Value, params: Vec<serde_json::Value>| {
        json!({
            "summary": summary, "parameters": params, "requestBody": body,
            "responses": { "200": { "description": "the account's version and events" }, "201": { "description": "opened" },
                "400": problem, "409": problem, "413": problem, "422": problem, "503": problem, "504": problem }
        })
    };
    let read = |summary: &str, params: Vec<serde_json::Value>| {
        json!({
            "summary": summary, "parameters": params,
            "responses": { "200": { "description": "the document and its version" }, "404": problem, "503": problem, "504": problem }
        })
    };
    Json(json!({
        "openapi": "3.1.0",
        "info": { "title": "bank gateway", "version": "1.0.0" },
        "paths": {
            "/accounts": { "post": command("open an account", json!({ "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["id", "owner"], "properties": { "id": { "type": "string" }, "owner": { "type": "string" } } } } } }), vec![key.clone()]) },
            "/accounts/{id}/deposits": { "post": command("deposit", amount.clone(), vec![id.clone(), key.clone()]) },
            "/accounts/{id}/withdrawals": { "post": command("withdraw", amount, vec![id.clone(), key.clone()]) },
            "/transfers": { "post": command("send money to another account (202; the process manager does the rest)", json!({ "required": true, "content": { "application/json": { "schema": {
                "type": "object", "required": ["from", "to", "amount"], "properties": { "from": { "type": "string" }, "to": { "type": "string" }, "amount": { "type": "integer", "minimum": 1 } } } } } }), vec![key.clone()]) },
            "/transfers/{id}": { "get": read("where a transfer stands", vec![id.clone()]) },
            "/accounts/{id}": { "get": read("the balance", vec![id.clone(), wait[0].clone(), wait[1].clone()]) },
            "/accounts/{id}/ledger": { "get": read("the movements", vec![id.clone(), wait[0].clone(), wait[1].clone()]) },
            "/accounts/{id}/history": { "get": read("the events with their metadata", vec![id]) },
            "/reports/daily/{date}": { "get": read("a day's totals", vec![json!({ "name": "date", "in": "path", "required": true, "schema": { "type": "string", "format": "date" } })]) },
            "/events": { "get": { "summary": "the accounts events live (Server-Sent Events; resume with Last-Event-ID)", "parameters": [
                json!({ "name": "from", "in": "query", "schema": { "type": "integer", "minimum": 1 } }),
                json!({ "name": "Last-Event-ID", "in": "header", "schema": { "type": "integer" } }) ],
                "responses": { "200": { "description": "text/event-stream" }, "400": problem } } },
            "/healthz": { "get": { "summary": "alive", "responses": { "200": { "description": "ok" } } } },
            "/readyz": { "get": { "summary": "NATS and both services answer", "responses": { "200": { "description": "ready" }, "503": { "description": "why not" } } } },
            "/metrics": { "get": { "summary": "Prometheus text", "responses": { "200": { "description": "metrics" } } } }
        }
    }))
}
