//! `--server URL`: the commands that read or drive runs, talking to a
//! `stepbox serve` instead of a local journal. The server renders the same
//! text the local commands print (`Accept: text/plain`), so both print alike.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use stepbox::OutcomeKind;
use stepbox::workflow::Workflow;

use super::{CliError, exit};

/// How long one submission waits for its run on the server before polling.
const WAIT: &str = "60s";

/// A server to talk to: `http://HOST:PORT`, and a bearer token.
#[derive(Debug, Clone)]
pub struct Remote {
    url: String,
    authority: String,
    token: Option<String>,
}

/// An answer: status, content type and body.
struct Answer {
    status: StatusCode,
    body: Bytes,
}

impl Remote {
    /// The server at `url`, with `token` for its `/v1` API.
    pub fn new(url: &str, token: Option<String>) -> Result<Remote, CliError> {
        let rest = match url.strip_prefix("http://") {
            Some(rest) => rest,
            None if url.starts_with("https://") => {
                return Err(anyhow!(
                    "`{url}`: https is not supported yet; reach the server over http (a TLS proxy in front of it terminates TLS)"
                )
                .into());
            }
            None => return Err(anyhow!("`{url}` is not a server URL like http://127.0.0.1:7700").into()),
        };
        let authority = rest.trim_end_matches('/').to_owned();
        if authority.is_empty() || authority.contains('/') {
            return Err(anyhow!("`{url}` is not a server URL like http://127.0.0.1:7700").into());
        }
        Ok(Remote {
            url: url.trim_end_matches('/').to_owned(),
            authority,
            token: token.filter(|t| !t.is_empty()),
        })
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(header::HeaderName, &str)],
        body: Vec<u8>,
    ) -> Result<Answer, CliError> {
        let unreachable = |e: &dyn std::fmt::Display| {
            CliError::host(anyhow!("cannot reach the server at {}: {e}", self.url))
        };
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|e| unreachable(&e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(&e))?;
        tokio::spawn(connection);
        let mut request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, &self.authority);
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(name, *value);
        }
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| CliError::host(anyhow!("cannot make the request: {e}")))?;
        let response = sender.send_request(request).await.map_err(|e| unreachable(&e))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(&e))?
            .to_bytes();
        let answer = Answer { status, body };
        if !status.is_success() {
            return Err(problem(&answer));
        }
        Ok(answer)
    }

    async fn get_text(&self, path: &str) -> Result<String, CliError> {
        let answer = self
            .call(Method::GET, path, &[(header::ACCEPT, "text/plain")], Vec::new())
            .await?;
        Ok(String::from_utf8_lossy(&answer.body).into_owned())
    }

    async fn get_json(&self, path: &str) -> Result<Value, CliError> {
        let answer = self
            .call(
                Method::GET,
                path,
                &[(header::ACCEPT, "application/json")],
                Vec::new(),
            )
            .await?;
        json_of(&answer)
    }

    /// `stepbox runs --server`.
    pub async fn runs(
        &self,
        status: &[String],
        workflow: Option<&str>,
        limit: usize,
        as_json: bool,
    ) -> Result<u8, CliError> {
        let mut query = vec![format!("limit={limit}")];
        if !status.is_empty() {
            query.push(format!("status={}", status.join(",")));
        }
        if let Some(w) = workflow {
            query.push(format!("workflow={}", encode(w)));
        }
        let path = format!("/v1/runs?{}", query.join("&"));
        if as_json {
            for run in self.get_json(&path).await?["runs"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{run}");
            }
        } else {
            print!("{}", self.get_text(&path).await?);
        }
        Ok(exit::SUCCESS)
    }

    /// `stepbox show --server`.
    pub async fn show(&self, id: u64, as_json: bool) -> Result<u8, CliError> {
        let path = format!("/v1/runs/{id}");
        match as_json {
            true => println!("{}", self.get_json(&path).await?),
            false => print!("{}", self.get_text(&path).await?),
        }
        Ok(exit::SUCCESS)
    }

    /// `stepbox report --server`.
    pub async fn report(&self, id: u64, svg: Option<&Path>, as_json: bool) -> Result<u8, CliError> {
        let path = format!("/v1/runs/{id}/report");
        if let Some(file) = svg {
            let answer = self
                .call(
                    Method::GET,
                    &path,
                    &[(header::ACCEPT, "image/svg+xml")],
                    Vec::new(),
                )
                .await?;
            std::fs::write(file, &answer.body)
                .with_context(|| format!("cannot write {}", file.display()))
                .map_err(CliError::host)?;
        }
        match as_json {
            true => println!("{}", self.get_json(&path).await?),
            false => print!("{}", self.get_text(&path).await?),
        }
        Ok(exit::SUCCESS)
    }

    /// `stepbox hosts --server`.
    pub async fn hosts(&self, as_json: bool) -> Result<u8, CliError> {
        if as_json {
            for host in self.get_json("/v1/hosts").await?["hosts"]
                .as_array()
                .into_iter()
                .flatten()
            {
                println!("{host}");
            }
        } else {
            print!("{}", self.get_text("/v1/hosts").await?);
        }
        Ok(exit::SUCCESS)
    }

    /// `stepbox metrics --server`: the server's live metrics.
    pub async fn metrics(&self) -> Result<u8, CliError> {
        print!("{}", self.get_text("/metrics").await?);
        Ok(exit::SUCCESS)
    }

    /// `stepbox cancel --server`.
    pub async fn cancel(&self, id: u64) -> Result<u8, CliError> {
        self.call(Method::POST, &format!("/v1/runs/{id}/cancel"), &[], Vec::new())
            .await?;
        println!("cancelling run {id}");
        Ok(exit::SUCCESS)
    }

    /// `stepbox run --server`: uploads each workflow's components and the
    /// workflow (naming them by digest), submits `repeat` runs of each on
    /// `input`, and prints their outputs as they end, as a local run does.
    pub async fn run(
        &self,
        files: &[std::path::PathBuf],
        input: &Value,
        repeat: usize,
        as_json: bool,
    ) -> Result<u8, CliError> {
        let mut code = exit::SUCCESS;
        for file in files {
            let workflow = Workflow::from_file(file)?;
            let text = self.upload(&workflow).await?;
            let media = match text.trim_start().starts_with('{') {
                true => "application/json",
                false => "application/yaml",
            };
            self.call(
                Method::PUT,
                &format!("/v1/workflows/{}", encode(&workflow.name)),
                &[(header::CONTENT_TYPE, media)],
                text.into_bytes(),
            )
            .await?;
            let body = match repeat {
                1 => input.clone(),
                n => json!({"inputs": vec![input.clone(); n]}),
            };
            let answer = self
                .call(
                    Method::POST,
                    &format!("/v1/workflows/{}/runs?wait={WAIT}", encode(&workflow.name)),
                    &[(header::CONTENT_TYPE, "application/json")],
                    body.to_string().into_bytes(),
                )
                .await?;
            let answer = json_of(&answer)?;
            let runs = match answer.get("runs") {
                Some(Value::Array(runs)) => runs.clone(),
                _ => vec![answer],
            };
            for run in runs {
                let run = self.ended(run).await?;
                code = super::journal::worst(code, self.print_run(&run, &workflow.name, as_json).await?);
            }
        }
        Ok(code)
    }

    /// `run` as it ended: polled when the submission's wait ran out first.
    async fn ended(&self, mut run: Value) -> Result<Value, CliError> {
        let id = run["id"]
            .as_u64()
            .context("the server answered a run without an id")?;
        while !matches!(run["status"].as_str(), Some("succeeded" | "failed" | "cancelled")) {
            tokio::time::sleep(Duration::from_millis(200)).await;
            run = self.get_json(&format!("/v1/runs/{id}")).await?;
        }
        Ok(run)
    }

    async fn print_run(&self, run: &Value, workflow: &str, as_json: bool) -> Result<u8, CliError> {
        let id = run["id"].as_u64().unwrap_or(0);
        if as_json {
            println!("{}", self.get_json(&format!("/v1/runs/{id}")).await?);
        } else if !run["output"].is_null() {
            println!("{}", run["output"]);
        }
        let status = run["status"].as_str().unwrap_or("failed");
        if status == "succeeded" {
            return Ok(exit::SUCCESS);
        }
        let why = run["error"].as_str().unwrap_or("no reason given");
        eprintln!("error: run {id} of `{workflow}`: {why}");
        Ok(match status {
            "cancelled" => exit::for_outcome(OutcomeKind::Cancelled),
            _ => serde_json::from_value::<OutcomeKind>(run["failed_kind"].clone())
                .map_or(exit::HOST_FAILURE, exit::for_outcome),
        })
    }

    /// Uploads every component `workflow` names; returns its text with
    /// each `component` replaced by the uploaded digest.
    async fn upload(&self, workflow: &Workflow) -> Result<String, CliError> {
        let mut digests = std::collections::HashMap::new();
        let mut edits = Vec::new();
        for step in &workflow.steps {
            let digest = match digests.get(&step.component) {
                Some(digest) => String::clone(digest),
                None => {
                    let bytes = std::fs::read(&step.component)
                        .with_context(|| format!("cannot read component `{}`", step.component.display()))?;
                    let answer = self
                        .call(
                            Method::PUT,
                            "/v1/components",
                            &[(header::CONTENT_TYPE, "application/wasm")],
                            bytes,
                        )
                        .await?;
                    let digest = json_of(&answer)?["digest"]
                        .as_str()
                        .context("the server answered an upload without a digest")?
                        .to_owned();
                    digests.insert(step.component.clone(), digest.clone());
                    digest
                }
            };
            edits.push((step.component_location, digest));
        }
        let text = workflow.text();
        if text.trim_start().starts_with('{') {
            // JSON workflows are read without positions: edit the tree.
            let mut tree: Value = serde_json::from_str(text).context("the workflow is not JSON")?;
            if let Some(steps) = tree["steps"].as_array_mut() {
                for (step, (_, digest)) in steps.iter_mut().zip(&edits) {
                    step["component"] = Value::String(digest.clone());
                }
            }
            return Ok(tree.to_string());
        }
        Ok(replace_scalars(text, &edits))
    }
}

/// `text` with the scalar (plain, or quoted) at each location replaced by
/// its string, written as a JSON string (valid in YAML and JSON alike).
fn replace_scalars(text: &str, edits: &[(stepbox::workflow::Location, String)]) -> String {
    let line_starts: Vec<usize> = std::iter::once(0)
        .chain(text.match_indices('\n').map(|(i, _)| i + 1))
        .collect();
    let mut spans: Vec<(usize, usize, &str)> = edits
        .iter()
        .filter_map(|(at, with)| {
            let line = *line_starts.get(at.line.checked_sub(1)?)?;
            let start = line
                + text[line..]
                    .chars()
                    .take(at.column.saturating_sub(1))
                    .map(char::len_utf8)
                    .sum::<usize>();
            let end = scalar_end(text, start)?;
            Some((start, end, with.as_str()))
        })
        .collect();
    spans.sort_by_key(|s| s.0);
    spans.dedup_by_key(|s| s.0);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, with) in spans {
        out.push_str(&text[at..start]);
        out.push_str(&Value::String(with.to_owned()).to_string());
        at = end;
    }
    out.push_str(&text[at..]);
    out
}

/// Where the scalar starting at `start` ends: after its closing quote, or
/// before the comment, comma, brace or line end that ends a plain one.
fn scalar_end(text: &str, start: usize) -> Option<usize> {
    let rest = &text[start..];
    let quote = rest.chars().next()?;
    if quote == '"' || quote == '\'' {
        let mut escaped = false;
        for (i, c) in rest.char_indices().skip(1) {
            match c {
                '\\' if quote == '"' && !escaped => escaped = true,
                c if c == quote && !escaped => return Some(start + i + 1),
                _ => escaped = false,
            }
        }
        return None;
    }
    let end = rest.find(['\n', ',', '}', ']', '#']).unwrap_or(rest.len());
    Some(start + rest[..end].trim_end().len())
}

fn json_of(answer: &Answer) -> Result<Value, CliError> {
    serde_json::from_slice(&answer.body)
        .map_err(|e| CliError::host(anyhow!("the server's answer is not JSON: {e}")))
}

/// A non-2xx answer as an error: the problem's detail, with the exit code
/// its status calls for.
fn problem(answer: &Answer) -> CliError {
    let detail = serde_json::from_slice::<Value>(&answer.body)
        .ok()
        .and_then(|p| {
            let detail = p["detail"].as_str()?.to_owned();
            Some(match (p["line"].as_u64(), p["column"].as_u64()) {
                (Some(l), Some(c)) => format!("{l}:{c}: {detail}"),
                _ => detail,
            })
        })
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).trim().to_owned());
    let status = answer.status;
    let code = match status.as_u16() {
        400..=428 | 431..=499 => exit::BAD_INPUT,
        _ => exit::HOST_FAILURE,
    };
    CliError {
        code,
        error: anyhow!("the server answered {}: {detail}", status.as_u16()),
    }
}

/// `s` percent-encoded for a path segment or a query value.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stepbox::workflow::Location;

    #[test]
    fn components_are_replaced_in_place_whatever_their_quoting() {
        let text = "name: w\nsteps:\n  - id: a\n    component: a.wasm # mine\n  - id: b\n    component: \"b c.wasm\"\n";
        let edits = [
            (Location { line: 4, column: 16 }, "sha256:aa".to_owned()),
            (Location { line: 6, column: 16 }, "sha256:bb".to_owned()),
        ];
        assert_eq!(
            replace_scalars(text, &edits),
            "name: w\nsteps:\n  - id: a\n    component: \"sha256:aa\" # mine\n  - id: b\n    component: \"sha256:bb\"\n"
        );
    }

    #[test]
    fn only_plain_http_urls_name_a_server() {
        assert!(Remote::new("http://127.0.0.1:7700/", None).is_ok());
        assert!(Remote::new("https://x:1", None).is_err());
        assert!(Remote::new("127.0.0.1:7700", None).is_err());
        assert!(Remote::new("http://h/path", None).is_err());
    }
}
