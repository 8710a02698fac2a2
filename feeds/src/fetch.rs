//! Getting a feed's bytes: a file read, or a URL fetched with ureq (rustls
//! with the webpki roots for `https://`; `http://` too, for a mirror on the
//! operator's own network), under a size limit and a time limit, with the
//! validators of the last fetch (ETag, Last-Modified) so that an unchanged
//! list costs one small answer.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where a feed comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Path(PathBuf),
    Url(String),
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Path(path) => write!(f, "{}", path.display()),
            Source::Url(url) => f.write_str(url),
        }
    }
}

/// What a fetch may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes at most; a bigger answer is refused whole.
    pub max_bytes: u64,
    /// The whole fetch, connect to last byte.
    pub timeout: Duration,
}

/// What the last fetch's answer said of its version, sent back with the
/// next one (`If-None-Match`, `If-Modified-Since`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// A fetch's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The list, and its validators for the next fetch.
    Body(Vec<u8>, Validators),
    /// Unchanged since the validators given (HTTP 304).
    NotModified,
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{from} is larger than {max_bytes} bytes")]
    TooBig { from: Source, max_bytes: u64 },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {detail}")]
    Transport { url: String, detail: String },
}

/// Fetches `source` within `limits`; `previous` are the validators of the
/// last good fetch of it.
pub fn fetch(
    source: &Source,
    limits: Limits,
    previous: &Validators,
) -> Result<Fetched, FetchError> {
    match source {
        Source::Path(path) => read_file(path, limits.max_bytes),
        Source::Url(url) => get(url, limits, previous),
    }
}

fn read_file(path: &Path, max_bytes: u64) -> Result<Fetched, FetchError> {
    let failed = |source| FetchError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(failed)?;
    let body = read_capped(file, max_bytes)
        .map_err(failed)?
        .ok_or_else(|| FetchError::TooBig {
            from: Source::Path(path.to_owned()),
            max_bytes,
        })?;
    Ok(Fetched::Body(body, Validators::default()))
}

/// Reads at most `max` bytes; `None` if there were more.
fn read_capped(reader: impl Read, max: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    reader.take(max.saturating_add(1)).read_to_end(&mut body)?;
    Ok((body.len() as u64 <= max).then_some(body))
}

fn get(url: &str, limits: Limits, previous: &Validators) -> Result<Fetched, FetchError> {
    let transport = |detail: String| FetchError::Transport {
        url: url.to_owned(),
        detail,
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(limits.timeout))
        .http_status_as_error(false)
        .max_redirects(3)
        // A feed's address is the operator's: no proxy from the
        // environment, and no cookies or credentials carried over.
        .proxy(None)
        .user_agent(concat!("penaltybox/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let mut request = agent.get(url);
    if let Some(etag) = &previous.etag {
        request = request.header("If-None-Match", etag);
    }
    if let Some(modified) = &previous.last_modified {
        request = request.header("If-Modified-Since", modified);
    }
    let response = request.call().map_err(|e| transport(one_line(&e)))?;
    let status = response.status().as_u16();
    if status == 304 {
        return Ok(Fetched::NotModified);
    }
    if !(200..300).contains(&status) {
        return Err(FetchError::Status {
            url: url.to_owned(),
            status,
        });
    }
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let validators = Validators {
        etag: header("etag"),
        last_modified: header("last-modified"),
    };
    let too_big = || FetchError::TooBig {
        from: Source::Url(url.to_owned()),
        max_bytes: limits.max_bytes,
    };
    if let Some(length) = header("content-length").and_then(|l| l.parse::<u64>().ok())
        && length > limits.max_bytes
    {
        return Err(too_big());
    }
    let reader = response.into_body().into_reader();
    let body = read_capped(reader, limits.max_bytes)
        .map_err(|e| transport(e.to_string()))?
        .ok_or_else(too_big)?;
    Ok(Fetched::Body(body, validators))
}

fn one_line(error: &ureq::Error) -> String {
    match error {
        ureq::Error::Timeout(_) => "no complete answer within the time limit".into(),
        other => other.to_string().replace('\n', " "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    const LIMITS: Limits = Limits {
        max_bytes: 1024,
        timeout: Duration::from_secs(2),
    };

    /// A one-connection-at-a-time HTTP server on loopback answering each
    /// request with `answer(request headers)`; `None` hangs.
    fn server(answer: fn(&str) -> Option<String>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut head = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    head.push_str(&line);
                }
                match answer(&head.to_ascii_lowercase()) {
                    Some(reply) => {
                        let _ = (&stream).write_all(reply.as_bytes());
                    }
                    None => std::thread::sleep(Duration::from_secs(5)),
                }
            }
        });
        format!("http://{addr}/drop.txt")
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    #[test]
    fn a_url_is_fetched_and_an_unchanged_one_costs_a_304() {
        let url = server(|head| {
            Some(if head.contains("if-none-match: \"v1\"") {
                "HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n".into()
            } else {
                ok("198.18.0.0/24\n")
            })
        });
        let source = Source::Url(url);
        let Fetched::Body(body, validators) =
            fetch(&source, LIMITS, &Validators::default()).unwrap()
        else {
            panic!("a body");
        };
        assert_eq!(body, b"198.18.0.0/24\n");
        assert_eq!(validators.etag.as_deref(), Some("\"v1\""));
        assert_eq!(
            fetch(&source, LIMITS, &validators).unwrap(),
            Fetched::NotModified
        );
    }

    #[test]
    fn errors_big_answers_and_hangs_are_one_line_each() {
        let url = server(|_| {
            Some("HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into())
        });
        let error = fetch(&Source::Url(url.clone()), LIMITS, &Validators::default()).unwrap_err();
        assert_eq!(error.to_string(), format!("{url} answered HTTP 500"));

        let url = server(|_| Some(ok(&"198.18.0.0/24\n".repeat(100))));
        let error = fetch(&Source::Url(url.clone()), LIMITS, &Validators::default()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("{url} is larger than 1024 bytes")
        );

        let url = server(|_| None);
        let started = std::time::Instant::now();
        let error = fetch(&Source::Url(url.clone()), LIMITS, &Validators::default()).unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "{:?}",
            started.elapsed()
        );
        assert!(error.to_string().starts_with(&url), "{error}");
        assert!(!error.to_string().contains('\n'), "{error}");
    }

    #[test]
    fn a_file_is_read_within_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drop.txt");
        std::fs::write(&path, "198.18.0.0/24\n").unwrap();
        let source = Source::Path(path.clone());
        assert!(matches!(
            fetch(&source, LIMITS, &Validators::default()),
            Ok(Fetched::Body(..))
        ));
        std::fs::write(&path, vec![b'#'; 2000]).unwrap();
        assert!(matches!(
            fetch(&source, LIMITS, &Validators::default()),
            Err(FetchError::TooBig { .. })
        ));
        let missing = Source::Path(dir.path().join("missing.txt"));
        let error = fetch(&missing, LIMITS, &Validators::default()).unwrap_err();
        assert!(error.to_string().starts_with("cannot read "), "{error}");
    }
}
