//! Blocklist feeds, wired: each `[[feeds]]` entry is a task on the main
//! arbiter that fetches its list (crate `feeds`, on a blocking thread:
//! reading a file or waiting on a URL never holds up the event loop),
//! parses it, and hands it to the ban core through the registry, which
//! applies it as a difference; then it sleeps one refresh interval.
//!
//! A refresh that fails (an unreadable file, an HTTP error, a hang past
//! the time limit, an empty list, one over `max_entries`) is one log line
//! and a counted error: the list before stays in force. An unchanged URL
//! (HTTP 304) applies the list before again, which moves its entries'
//! expiry forward. A reload restarts every feed at once (a changed file
//! is applied then), and releases the entries of a feed no longer listed.

use std::sync::Mutex;

use actors::{FeedList, ServerHandle};
use feeds::{Fetched, Parsed, Validators};
use futures_util::future::{AbortHandle, Abortable};

use crate::settings::FeedSettings;

/// The running feeds of one server.
pub struct FeedRunners {
    server: ServerHandle,
    running: Mutex<Vec<(FeedSettings, AbortHandle)>>,
}

impl FeedRunners {
    /// Starts one task per feed; call from inside the actix system.
    pub fn start(server: ServerHandle, feeds: &[FeedSettings]) -> Self {
        let runners = FeedRunners {
            server,
            running: Mutex::new(Vec::new()),
        };
        runners.replace(feeds);
        runners
    }

    /// A reload: every feed starts again with a fetch now; the entries of
    /// a feed that is gone are released.
    pub fn replace(&self, feeds: &[FeedSettings]) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (feed, task) in running.drain(..) {
            task.abort();
            if !feeds.iter().any(|f| f.name == feed.name) {
                let server = self.server.clone();
                let list = FeedList {
                    name: feed.name.clone(),
                    entries: Vec::new(),
                    refresh: feed.refresh.0,
                    bad_lines: 0,
                };
                log::info!(
                    "feed {}: no longer configured: its entries are released",
                    feed.name
                );
                let _ = spawn(async move {
                    server.apply_feed(list).await;
                });
            }
        }
        for feed in feeds {
            self.server
                .feed_source(&feed.name, &feed.source().to_string());
            let task = spawn(run(self.server.clone(), feed.clone()));
            running.push((feed.clone(), task));
        }
    }
}

/// Runs `task` on the system's arbiter, wherever the caller runs (a
/// reload may come from a session's worker); the handle aborts it.
fn spawn(task: impl Future<Output = ()> + Send + 'static) -> AbortHandle {
    let (handle, registration) = AbortHandle::new_pair();
    let task = Abortable::new(task, registration);
    actix_rt::System::current().arbiter().spawn(async move {
        let _ = task.await;
    });
    handle
}

/// One feed, for as long as it is configured.
async fn run(server: ServerHandle, feed: FeedSettings) {
    let mut validators = Validators::default();
    // The list last applied: an unchanged answer applies it again.
    let mut last: Option<Vec<model::Cidr>> = None;
    loop {
        let fetched = {
            let feed = feed.clone();
            let validators = validators.clone();
            actix_rt::task::spawn_blocking(move || refresh(&feed, &validators)).await
        };
        let list = match fetched {
            Ok(Ok(Refreshed::New(parsed, new_validators))) => {
                validators = new_validators;
                last = Some(parsed.entries.clone());
                Some((parsed.entries, parsed.bad_count))
            }
            Ok(Ok(Refreshed::Unchanged)) => last.clone().map(|entries| (entries, 0)),
            Ok(Err(why)) => {
                log::error!(
                    "feed {}: refresh failed, the list before stays in force: {why}",
                    feed.name
                );
                server.feed_failed(&feed.name, &why);
                None
            }
            Err(_) => return, // aborted (a reload) or the runtime stopped
        };
        if let Some((entries, bad_lines)) = list {
            let list = FeedList {
                name: feed.name.clone(),
                entries,
                refresh: feed.refresh.0,
                bad_lines,
            };
            if server.apply_feed(list).await.is_none() {
                return; // the registry is gone: the server stops
            }
        }
        actix_rt::time::sleep(feed.refresh.0).await;
    }
}

enum Refreshed {
    New(Parsed, Validators),
    Unchanged,
}

/// Fetches and parses; `Err` is the one-line reason the list before stays.
fn refresh(feed: &FeedSettings, validators: &Validators) -> Result<Refreshed, String> {
    let source = feed.source();
    let body = match feeds::fetch(&source, feed.limits(), validators) {
        Ok(Fetched::Body(body, validators)) => (body, validators),
        Ok(Fetched::NotModified) => return Ok(Refreshed::Unchanged),
        Err(error) => return Err(error.to_string()),
    };
    let parsed = feeds::parse(&body.0, feed.max_entries)
        .map_err(|too_many| format!("{source} lists {too_many}: refused whole"))?;
    if parsed.bad_count > 0 {
        let named: Vec<String> = parsed
            .bad
            .iter()
            .map(|bad| format!("{source}:{}: {}", bad.line, bad.reason))
            .collect();
        log::warn!(
            "feed {}: {} lines are not entries and are skipped (the rest applies): {}{}",
            feed.name,
            parsed.bad_count,
            named.join("; "),
            if parsed.bad_count > named.len() {
                "; ..."
            } else {
                ""
            }
        );
    }
    if parsed.entries.is_empty() {
        return Err(format!(
            "{source} lists no entries (an empty or broken list is not applied; remove the feed to release its entries)"
        ));
    }
    Ok(Refreshed::New(parsed, body.1))
}
