//! The readable page of `/docs`: plain HTML built once from the documents the gateway serves, with
//! no script and nothing fetched from elsewhere (the page's CSP holds it to this origin).
//!
//! The page is a heading and a sequence of parts, one per document: [`openapi`] for the HTTP API,
//! [`asyncapi`] for the bus. Another document joins the page as another part: a function from
//! that document to its HTML, passed to [`page`] after the others. Element ids do not collide:
//! the OpenAPI part's are `tag-…`, `schema-…` and the operation ids, the bus part's start `bus-`.

use serde_json::Value;
use std::fmt::Write;

/// The page's title and version, in its `<title>` and `<h1>`.
pub(super) struct Heading<'a> {
    pub title: &'a str,
    pub version: &'a str,
}

/// The whole page: the title, then each part in order.
pub(super) fn page(heading: &Heading, parts: &[String]) -> String {
    let title = escape(heading.title);
    let mut html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<title>{title} API reference</title><link rel=\"stylesheet\" href=\"/assets/app.css\"></head>\
<body class=\"reference\"><main><h1>{title} <small>{}</small></h1>",
        escape(heading.version),
    );
    for part in parts {
        html.push_str(part);
    }
    html.push_str("</main></body></html>\n");
    html
}

/// The OpenAPI document's part: its description and where to fetch it (`address`), each tag's
/// operations with their parameters, bodies and responses, then each schema.
pub(super) fn openapi(doc: &Value, address: &str) -> String {
    let mut html = format!(
        "{}<p>Machine-readable: <a href=\"{1}\">{1}</a> (OpenAPI {2}).</p>",
        prose(doc["info"]["description"].as_str().unwrap_or("")),
        escape(address),
        escape(doc["openapi"].as_str().unwrap_or("")),
    );
    let empty = serde_json::Map::new();
    let tags: Vec<&Value> = doc["tags"].as_array().map(|t| t.iter().collect()).unwrap_or_default();
    let paths = doc["paths"].as_object().unwrap_or(&empty);
    for tag in &tags {
        let name = tag["name"].as_str().unwrap_or("");
        let _ = write!(
            html,
            "<section><h2 id=\"tag-{0}\">{0}</h2>{1}",
            escape(name),
            prose(tag["description"].as_str().unwrap_or(""))
        );
        for (path, item) in paths {
            for (method, operation) in item.as_object().unwrap_or(&empty) {
                let tagged = operation["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == name));
                if tagged {
                    render_operation(&mut html, method, path, operation);
                }
            }
        }
        html.push_str("</section>");
    }
    html.push_str("<section><h2 id=\"schemas\">Schemas</h2>");
    let schemas = doc["components"]["schemas"].as_object().unwrap_or(&empty);
    for (name, schema) in schemas {
        let _ = write!(html, "<h3 id=\"schema-{0}\">{0}</h3>", escape(name));
        html.push_str(&prose(schema["description"].as_str().unwrap_or("")));
        if let Some(properties) = schema["properties"].as_object() {
            let required: Vec<&str> = schema["required"]
                .as_array()
                .map(|r| r.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            html.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
            for (field, property) in properties {
                let _ = write!(
                    html,
                    "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>",
                    escape(field),
                    if required.contains(&field.as_str()) {
                        " (required)"
                    } else {
                        ""
                    },
                    schema_summary(property),
                    prose(property["description"].as_str().unwrap_or("")),
                );
            }
            html.push_str("</table>");
        } else {
            let _ = write!(html, "<p>{}</p>", schema_summary(schema));
        }
    }
    html.push_str("</section>");
    html
}

/// The AsyncAPI document's part: its description and where to fetch it (`address`), the
/// channels (queues and topics) with what travels on each, what each service sends and receives
/// (with the topics' subscriptions and their filters), then each message's payload.
pub(super) fn asyncapi(doc: &Value, address: &str) -> String {
    let empty = serde_json::Map::new();
    let mut html = format!(
        "<section><h2 id=\"bus\">The bus</h2>{}<p>Machine-readable: <a href=\"{1}\">{1}</a> (AsyncAPI {2}).</p>",
        prose(doc["info"]["description"].as_str().unwrap_or("")),
        escape(address),
        escape(doc["asyncapi"].as_str().unwrap_or("")),
    );
    let message_link = |reference: &Value| {
        let name = reference["$ref"]
            .as_str()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("");
        format!("<a href=\"#bus-message-{0}\">{0}</a>", escape(name))
    };
    html.push_str(
        "<h3 id=\"bus-channels\">Channels</h3><table><tr><th>channel</th><th>address</th><th>messages</th></tr>",
    );
    for (name, channel) in doc["channels"].as_object().unwrap_or(&empty) {
        let messages: Vec<String> = channel["messages"]
            .as_object()
            .unwrap_or(&empty)
            .values()
            .map(message_link)
            .collect();
        let _ = write!(
            html,
            "<tr><td id=\"bus-channel-{}\">{}<br><small>{}</small></td><td><code>{}</code></td><td>{}</td></tr>",
            escape(name),
            escape(channel["title"].as_str().unwrap_or(name)),
            escape(channel["description"].as_str().unwrap_or("")),
            escape(channel["address"].as_str().unwrap_or("")),
            messages.join(", "),
        );
    }
    html.push_str("</table><h3 id=\"bus-operations\">Who sends and who receives</h3>");
    for (id, operation) in doc["operations"].as_object().unwrap_or(&empty) {
        let messages: Vec<String> = operation["messages"]
            .as_array()
            .map(|m| m.iter().map(message_link).collect())
            .unwrap_or_default();
        let _ = write!(
            html,
            "<article id=\"bus-operation-{}\"><h4>{}</h4><p>{} ({}): {}</p>",
            escape(id),
            escape(operation["title"].as_str().unwrap_or(id)),
            escape(operation["summary"].as_str().unwrap_or("")),
            escape(operation["action"].as_str().unwrap_or("")),
            messages.join(", "),
        );
        let consumers = operation["bindings"]["sns"]["consumers"].as_array();
        for consumer in consumers.into_iter().flatten() {
            let types = codes(&consumer["filterPolicy"]["type"]);
            // The attributes it also requires (a queue subscribed to integration events).
            let also: String = consumer["filterPolicy"]
                .as_object()
                .unwrap_or(&empty)
                .iter()
                .filter(|(attribute, _)| *attribute != "type")
                .map(|(attribute, values)| {
                    format!(
                        " with <code>{}</code> {}",
                        escape(attribute),
                        codes(values).join(" or ")
                    )
                })
                .collect();
            let _ = write!(
                html,
                "<p>Subscription to <code>{}</code> (raw delivery, dead letters to <code>{}</code>), admitting <code>type</code> {}{also}.</p>",
                escape(consumer["endpoint"]["name"].as_str().unwrap_or("")),
                escape(
                    consumer["redrivePolicy"]["deadLetterQueue"]["name"]
                        .as_str()
                        .unwrap_or("")
                ),
                types.join(", "),
            );
        }
        html.push_str("</article>");
    }
    html.push_str("<h3 id=\"bus-messages\">Messages</h3>");
    for (name, message) in doc["components"]["messages"].as_object().unwrap_or(&empty) {
        let _ = write!(
            html,
            "<article id=\"bus-message-{0}\"><h4>{0}</h4>{1}{2}",
            escape(name),
            prose(message["summary"].as_str().unwrap_or("")),
            prose(message["description"].as_str().unwrap_or("")),
        );
        html.push_str("<table><tr><th>field</th><th>type</th><th>description</th></tr>");
        let envelope = &message["payload"];
        let rows = envelope["properties"]
            .as_object()
            .unwrap_or(&empty)
            .iter()
            .flat_map(|(field, schema)| {
                let nested = (field == "payload").then(|| schema["properties"].as_object()).flatten();
                let own = std::iter::once((field.clone(), schema));
                let inner = nested
                    .into_iter()
                    .flatten()
                    .map(|(inner, schema)| (format!("payload.{inner}"), schema));
                own.chain(inner)
            });
        for (field, schema) in rows {
            let _ = write!(
                html,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                escape(&field),
                schema_summary(schema),
                escape(schema["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table></article>");
    }
    html.push_str("</section>");
    html
}

/// Each string of a JSON array as `<code>`, escaped (none when it is not an array).
fn codes(values: &Value) -> Vec<String> {
    values
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|v| format!("<code>{}</code>", escape(v)))
        .collect()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A description: paragraphs, with `code` spans; everything else as text.
fn prose(text: &str) -> String {
    text.split("\n\n")
        .filter(|p| !p.trim().is_empty())
        .map(|paragraph| {
            let mut html = String::from("<p>");
            for (i, part) in escape(paragraph).split('`').enumerate() {
                if i % 2 == 1 {
                    let _ = write!(html, "<code>{part}</code>");
                } else {
                    html.push_str(part);
                }
            }
            html.push_str("</p>");
            html
        })
        .collect()
}

/// A schema in a line: its `$ref` name (linked), its type, or its shape.
fn schema_summary(schema: &Value) -> String {
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        let name = reference.rsplit('/').next().unwrap_or(reference);
        return format!("<a href=\"#schema-{0}\">{0}</a>", escape(name));
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(parts) = schema.get(key).and_then(Value::as_array) {
            let parts: Vec<String> = parts.iter().map(schema_summary).collect();
            return parts.join(" | ");
        }
    }
    if let Some(items) = schema.get("items") {
        return format!("array of {}", schema_summary(items));
    }
    let kind = match schema.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        Some(Value::Array(kinds)) => kinds.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        _ => "any".to_owned(),
    };
    let mut text = escape(&kind);
    if let Some(format) = schema.get("format").and_then(Value::as_str) {
        let _ = write!(text, " ({})", escape(format));
    }
    if let Some(value) = schema.get("const") {
        let _ = write!(text, " <code>{}</code>", escape(&value.to_string()));
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        let values: Vec<String> = values
            .iter()
            .map(|v| format!("<code>{}</code>", escape(&v.to_string())))
            .collect();
        let _ = write!(text, ": {}", values.join(", "));
    }
    let bounds: Vec<String> = ["minLength", "maxLength", "minimum", "maximum", "pattern"]
        .iter()
        .filter_map(|key| Some(format!("{key} {}", schema.get(*key)?)))
        .collect();
    if !bounds.is_empty() {
        let _ = write!(text, "; {}", escape(&bounds.join(", ")));
    }
    text
}

fn render_operation(html: &mut String, method: &str, path: &str, operation: &Value) {
    let id = escape(operation["operationId"].as_str().unwrap_or(""));
    let _ = write!(
        html,
        "<article id=\"{id}\"><h3><code>{} {}</code> {}</h3>{}",
        escape(&method.to_uppercase()),
        escape(path),
        escape(operation["summary"].as_str().unwrap_or("")),
        prose(operation["description"].as_str().unwrap_or("")),
    );
    if operation.get("security").is_some() {
        html.push_str("<p>Requires <code>Authorization: Bearer &lt;OPERATOR_TOKEN&gt;</code>.</p>");
    }
    if let Some(parameters) = operation["parameters"].as_array().filter(|p| !p.is_empty()) {
        html.push_str("<table><tr><th>parameter</th><th>in</th><th>type</th><th>description</th></tr>");
        for parameter in parameters {
            let _ = write!(
                html,
                "<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape(parameter["name"].as_str().unwrap_or("")),
                if parameter["required"] == Value::Bool(true) {
                    " (required)"
                } else {
                    ""
                },
                escape(parameter["in"].as_str().unwrap_or("")),
                schema_summary(&parameter["schema"]),
                prose(parameter["description"].as_str().unwrap_or("")),
            );
        }
        html.push_str("</table>");
    }
    if let Some(content) = operation["requestBody"]["content"].as_object() {
        for (media, body) in content {
            let _ = write!(
                html,
                "<p>Body (<code>{}</code>): {}</p>",
                escape(media),
                schema_summary(&body["schema"])
            );
        }
    }
    html.push_str("<table><tr><th>status</th><th>meaning</th><th>body</th></tr>");
    for (status, response) in operation["responses"].as_object().into_iter().flatten() {
        let bodies: Vec<String> = response["content"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(media, body)| format!("<code>{}</code> {}", escape(media), schema_summary(&body["schema"])))
            .collect();
        let headers: Vec<String> = response["headers"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, _)| format!("<code>{}</code>", escape(name)))
            .collect();
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}{}</td><td>{}</td></tr>",
            escape(status),
            prose(response["description"].as_str().unwrap_or("")),
            if headers.is_empty() {
                String::new()
            } else {
                format!("<p>Headers: {}</p>", headers.join(", "))
            },
            bodies.join("<br>"),
        );
    }
    html.push_str("</table></article>");
}
