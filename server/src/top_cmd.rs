//! `penaltybox top`: a live view of a running server over the admin
//! connection (the same keys as `bans`). One `Top` request a second, drawn
//! by `top_view.rs`; a lost connection is one line on the screen and is
//! made again each second. The terminal is always given back: on `q`, on
//! Ctrl-C (a key in raw mode), on SIGTERM, on an error, and on a panic
//! (ratatui's `init` installs a hook that restores it first). A closed
//! terminal (SIGHUP) ends it by the signal's default action.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use model::Cidr;
use protocol::message::MAX_TOP_RECENT;
use protocol::{AdminRequest, Client, Request, Response};
use ratatui::DefaultTerminal;
use ratatui::crossterm::event::{self, Event, KeyEventKind};

use crate::bans_cmd::AdminSession;
use crate::top_view::{Action, TopState};

#[derive(clap::Args)]
pub struct TopArgs {
    #[command(flatten)]
    session: AdminSession,
    /// How often the view asks the server (at least 100ms).
    #[arg(long, default_value = "1s", value_parser = parse_interval)]
    interval: Duration,
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(100) || interval > Duration::from_secs(60) {
        return Err(format!("{text} is not between 100ms and 60s"));
    }
    Ok(interval)
}

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // The first connection is made before the screen is taken, so that a
    // wrong key or address is one plain line.
    let client = runtime.block_on(args.session.connect())?;
    let mut terminal = ratatui::try_init().context("cannot take the terminal")?;
    let result = runtime.block_on(watch(&mut terminal, &args, client));
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

async fn watch(
    terminal: &mut DefaultTerminal,
    args: &TopArgs,
    client: Box<Client>,
) -> anyhow::Result<()> {
    use actix_rt::signal::unix::{SignalKind, signal};
    use futures_util::FutureExt;
    // SIGTERM ends the view as q does, so the terminal is given back.
    // SIGHUP keeps its default: the terminal is gone, nothing to give back,
    // and a closed terminal reads as end-of-file forever, which crossterm
    // 0.28 spins on inside its poll.
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut state = TopState::default();
    let mut client = Some(client);
    let mut last_answer = Instant::now();
    let mut next_poll = Instant::now();
    loop {
        // Lets the runtime take in a signal even when nothing else here
        // waits (the server is gone and every connect fails at once).
        tokio::task::yield_now().await;
        if terminate.recv().now_or_never().is_some() {
            return Ok(());
        }
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + args.interval;
            if client.is_none() {
                let connected = within(args.session.connect())
                    .await
                    .and_then(|result| result);
                client = connected.map_err(|e| lost(&mut state, &e)).ok();
            }
            if let Some(live) = client.as_mut().filter(|_| !state.paused) {
                let request = Request::Admin(AdminRequest::Top {
                    recent: MAX_TOP_RECENT,
                });
                match within(live.call(&request)).await {
                    Ok(Ok(Response::Top(view))) => {
                        state.update(*view, last_answer.elapsed());
                        last_answer = Instant::now();
                    }
                    Ok(Ok(other)) => state.status = Some(format!("unexpected answer: {other:?}")),
                    Ok(Err(error)) => {
                        lost(&mut state, &error.into());
                        client = None;
                    }
                    Err(error) => {
                        lost(&mut state, &error);
                        client = None;
                    }
                }
            }
        }
        terminal.draw(|frame| state.draw(frame))?;
        let wait = next_poll.saturating_duration_since(Instant::now());
        if !event::poll(wait.min(Duration::from_millis(100)))? {
            continue;
        }
        let Event::Key(key) = event::read()? else {
            continue;
        };
        if key.kind != KeyEventKind::Press {
            continue;
        }
        match state.key(key) {
            Action::None => {}
            Action::Quit => return Ok(()),
            Action::Show(prefix) => state.detail = Some(show(client.as_deref_mut(), prefix).await),
            Action::Release(prefix) => {
                state.status = Some(release(client.as_deref_mut(), prefix).await);
                next_poll = Instant::now();
            }
        }
    }
}

/// What the screen waits for an answer: a server that does not answer
/// leaves the keys (q, Ctrl-C) working within this.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

async fn within<T>(future: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    tokio::time::timeout(ANSWER_WITHIN, future)
        .await
        .map_err(|_| anyhow::anyhow!("no answer within {}s", ANSWER_WITHIN.as_secs()))
}

fn lost(state: &mut TopState, error: &anyhow::Error) {
    state.lost = Some(format!(
        "connection lost: {error:#}; trying again every second"
    ));
}

async fn show(client: Option<&mut Client>, prefix: Cidr) -> String {
    let Some(client) = client else {
        return "not connected".into();
    };
    let request = Request::Admin(AdminRequest::ShowBan { target: prefix });
    match within(client.call(&request))
        .await
        .and_then(|answer| answer.map_err(Into::into))
    {
        Ok(Response::BanShown(report)) => {
            crate::display::report_text(&prefix, &report, actors::now_ms())
        }
        Ok(other) => format!("{other:?}"),
        Err(error) => format!("{error}"),
    }
}

async fn release(client: Option<&mut Client>, prefix: Cidr) -> String {
    let Some(client) = client else {
        return format!("{prefix} not released: not connected");
    };
    let request = Request::Admin(AdminRequest::RemoveBan { prefix });
    match within(client.call(&request))
        .await
        .and_then(|answer| answer.map_err(Into::into))
    {
        Ok(Response::BanRemoved { existed: true, .. }) => format!("released {prefix}"),
        Ok(Response::BanRemoved { existed: false, .. }) => format!("{prefix} was not timed out"),
        Ok(Response::Error { message, .. }) => format!("{prefix} not released: {message}"),
        Ok(other) => format!("{prefix}: {other:?}"),
        Err(error) => format!("{prefix} not released: {error}"),
    }
}
