//! Recognises the operation named inside a JSON body: JSON-RPC methods, MCP
//! tool calls, GraphQL documents and SQL carried in a JSON field.

use serde_json::Value;

use crate::action::{Operation, Protocol, redact_json, redact_text};

/// Longest `detail` kept for an operation.
const DETAIL_LIMIT: usize = 4096;

/// JSON fields that commonly carry SQL text.
const SQL_FIELDS: &[&str] = &["sql", "query", "statement", "stmt", "command"];

/// SQL statement keywords recognised at the start of a field.
const SQL_KEYWORDS: &[&str] = &[
    "SELECT", "INSERT", "UPDATE", "DELETE", "DROP", "TRUNCATE", "ALTER", "CREATE", "GRANT",
    "REVOKE", "MERGE", "WITH", "REPLACE", "EXPLAIN", "SHOW", "DESCRIBE", "UPSERT", "COPY",
    "VACUUM", "CALL", "EXEC", "EXECUTE",
];

/// The operation carried by a JSON body, if any. For a JSON-RPC batch, the
/// first call is named and the rest are part of the detail.
pub(crate) fn detect(json: &Value) -> Option<Operation> {
    match json {
        Value::Array(items) => {
            let mut first = items.iter().find_map(detect)?;
            if items.len() > 1 {
                first.detail = Some(redacted_json(json));
            }
            Some(first)
        }
        Value::Object(map) => {
            let is_rpc = map.contains_key("jsonrpc") || map.contains_key("params");
            if let Some(method) = map.get("method").and_then(Value::as_str)
                && is_rpc
            {
                return Some(json_rpc(method, map.get("params")));
            }
            if let Some(op) = graphql(map) {
                return Some(op);
            }
            sql(map)
        }
        _ => None,
    }
}

fn json_rpc(method: &str, params: Option<&Value>) -> Operation {
    if method == "tools/call" {
        let tool = params.and_then(|p| p.get("name")).and_then(Value::as_str).unwrap_or("");
        let arguments = params.and_then(|p| p.get("arguments"));
        return Operation {
            protocol: Protocol::Mcp,
            name: tool.to_owned(),
            detail: arguments.map(redacted_json),
            tool: None,
        };
    }
    Operation {
        protocol: Protocol::JsonRpc,
        name: method.to_owned(),
        detail: params.map(redacted_json),
        tool: None,
    }
}

/// A GraphQL request: `{"query": "mutation X { ... }", "operationName": ...}`.
fn graphql(map: &serde_json::Map<String, Value>) -> Option<Operation> {
    let document = map.get("query").and_then(Value::as_str)?;
    let trimmed = document.trim_start();
    // A document that opens with `{` is an anonymous query: it has no
    // keyword and so no declared name.
    let keyword =
        ["mutation", "subscription", "query"].into_iter().find(|k| trimmed.starts_with(k));
    let kind = keyword.or_else(|| trimmed.starts_with('{').then_some("query"))?;

    let declared = keyword.and_then(|k| {
        trimmed[k.len()..]
            .trim_start()
            .split(|c: char| !(c.is_alphanumeric() || c == '_'))
            .next()
            .filter(|s| !s.is_empty())
    });
    let named = map.get("operationName").and_then(Value::as_str).or(declared);
    let name = match named {
        Some(n) => format!("{kind} {n}"),
        None => kind.to_owned(),
    };
    Some(Operation {
        protocol: Protocol::GraphQl,
        name,
        detail: Some(bounded(document.to_owned())),
        tool: None,
    })
}

/// SQL text in a well-known field: `{"sql": "DROP TABLE users"}`.
fn sql(map: &serde_json::Map<String, Value>) -> Option<Operation> {
    SQL_FIELDS.iter().find_map(|field| {
        let text = map.get(*field)?.as_str()?;
        let keyword = first_sql_keyword(text)?;
        Some(Operation {
            protocol: Protocol::Sql,
            name: keyword.to_owned(),
            detail: Some(bounded(text.to_owned())),
            tool: None,
        })
    })
}

fn first_sql_keyword(text: &str) -> Option<&'static str> {
    let word: String = text
        .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect();
    let upper = word.to_ascii_uppercase();
    SQL_KEYWORDS.iter().copied().find(|k| *k == upper)
}

/// JSON as bounded text with the values of secret-named keys redacted: the
/// detail is stored and shown to reviewers.
fn redacted_json(value: &Value) -> String {
    let mut value = value.clone();
    redact_json(&mut value);
    let text = serde_json::to_string(&value).unwrap_or_default();
    bounded(redact_text(&text).into_owned())
}

fn bounded(mut text: String) -> String {
    if text.len() > DETAIL_LIMIT {
        let mut end = DETAIL_LIMIT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn name_of(v: Value) -> Option<(Protocol, String)> {
        detect(&v).map(|op| (op.protocol, op.name))
    }

    #[test]
    fn mcp_tool_call_names_the_tool() {
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"delete_file","arguments":{"path":"/etc"}}});
        assert_eq!(name_of(call), Some((Protocol::Mcp, "delete_file".into())));
    }

    #[test]
    fn json_rpc_method_is_named() {
        let call = json!({"jsonrpc":"2.0","id":1,"method":"eth_sendTransaction","params":[]});
        assert_eq!(name_of(call), Some((Protocol::JsonRpc, "eth_sendTransaction".into())));
    }

    #[test]
    fn graphql_mutation_is_named_with_its_kind() {
        let q =
            json!({"query":"mutation DeleteRepo($id: ID!) { deleteRepository(id: $id) { id } }"});
        assert_eq!(name_of(q), Some((Protocol::GraphQl, "mutation DeleteRepo".into())));
        let anon = json!({"query":"{ viewer { login } }"});
        assert_eq!(name_of(anon), Some((Protocol::GraphQl, "query".into())));
    }

    #[test]
    fn secrets_in_tool_arguments_are_redacted_in_the_detail() {
        let call = json!({"jsonrpc":"2.0","id":1,"method":"tools/call",
            "params":{"name":"create_key","arguments":{"api_key":"sk_live_123","name":"ci"}}});
        let detail = detect(&call).and_then(|op| op.detail).unwrap();
        assert!(!detail.contains("sk_live_123"));
        assert!(detail.contains("\"ci\""));
    }

    #[test]
    fn sql_in_a_json_field_is_recognised() {
        let q = json!({"sql":"  drop table users"});
        assert_eq!(name_of(q), Some((Protocol::Sql, "DROP".into())));
        assert_eq!(name_of(json!({"query":"hello"})), None);
    }
}
