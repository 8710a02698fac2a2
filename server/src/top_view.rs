//! `penaltybox top`'s screen, apart from the terminal and the connection
//! (`top_cmd.rs`): what it keeps between answers (rates, a history of
//! time-outs a second by cause, the selected row, the filter, a question),
//! what a key does to it, and how it is drawn. Tested on ratatui's
//! `TestBackend`.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use model::{BanInfo, Cidr};
use protocol::message::TopView;
use ratatui::Frame;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style, Stylize};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Clear, Paragraph, Row, Sparkline, Table, TableState, Wrap};

use crate::display;

/// Samples of time-outs a second kept per cause (one an answer).
const HISTORY: usize = 180;
/// Causes with a sparkline, the busiest first.
const SPARKLINES: usize = 6;

/// What a key asks of the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    None,
    Quit,
    /// `bans show` of the selected time-out's prefix.
    Show(Cidr),
    /// Release it (confirmed with `y`).
    Release(Cidr),
}

/// Rates between two answers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Rates {
    accepted: f64,
    refused: f64,
    kernel_dropped: f64,
}

#[derive(Default)]
pub struct TopState {
    view: Option<TopView>,
    rates: Rates,
    /// Time-outs a second, by cause, oldest first.
    history: BTreeMap<String, VecDeque<u64>>,
    pub paused: bool,
    /// The filter in force (a prefix's text or a cause), and the one being
    /// typed after `/`.
    filter: String,
    typing: Option<String>,
    table: TableState,
    /// The time-out `r` asks about.
    confirm: Option<Cidr>,
    /// `bans show` of a time-out, until a key closes it.
    pub detail: Option<String>,
    /// The connection is lost: why (until the next answer).
    pub lost: Option<String>,
    /// What the last action did (until the next key).
    pub status: Option<String>,
}

impl TopState {
    /// A new answer, `elapsed` after the one before.
    pub fn update(&mut self, view: TopView, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64().max(0.001);
        if let Some(before) = &self.view {
            let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / seconds;
            self.rates = Rates {
                accepted: rate(
                    view.stats.connections_accepted,
                    before.stats.connections_accepted,
                ),
                refused: rate(
                    view.stats.connections_refused,
                    before.stats.connections_refused,
                ),
                kernel_dropped: match (view.kernel, before.kernel) {
                    (Some(now), Some(then)) => rate(now.dropped, then.dropped),
                    _ => 0.0,
                },
            };
            for cause in &view.by_cause {
                let then = before
                    .by_cause
                    .iter()
                    .find(|c| c.cause == cause.cause)
                    .map_or(cause.total, |c| c.total);
                let samples = self.history.entry(cause.cause.clone()).or_default();
                if samples.len() == HISTORY {
                    samples.pop_front();
                }
                samples.push_back(rate(cause.total, then).round() as u64);
            }
        }
        self.view = Some(view);
        self.lost = None;
        let rows = self.rows().len();
        match self.table.selected() {
            Some(i) if i >= rows => self.table.select(rows.checked_sub(1)),
            None if rows > 0 => self.table.select(Some(0)),
            _ => {}
        }
    }

    /// The newest time-outs the filter lets through.
    fn rows(&self) -> Vec<&BanInfo> {
        let Some(view) = &self.view else {
            return Vec::new();
        };
        view.recent
            .iter()
            .filter(|ban| {
                self.filter.is_empty()
                    || ban.prefix.to_string().starts_with(&self.filter)
                    || ban.cause.as_str().contains(&self.filter)
            })
            .collect()
    }

    fn selected(&self) -> Option<Cidr> {
        let rows = self.rows();
        self.table
            .selected()
            .and_then(|i| rows.get(i))
            .map(|ban| ban.prefix)
    }

    /// What `key` does.
    pub fn key(&mut self, key: KeyEvent) -> Action {
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Action::Quit;
        }
        self.status = None;
        if let Some(typed) = &mut self.typing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = self.typing.take().unwrap_or_default();
                    self.table.select(Some(0));
                }
                KeyCode::Esc => self.typing = None,
                KeyCode::Backspace => {
                    typed.pop();
                }
                KeyCode::Char(c) if typed.len() < 64 => typed.push(c),
                _ => {}
            }
            return Action::None;
        }
        if let Some(prefix) = self.confirm.take() {
            if key.code == KeyCode::Char('y') {
                return Action::Release(prefix);
            }
            self.status = Some(format!("{prefix} not released"));
            return Action::None;
        }
        if self.detail.take().is_some() {
            return Action::None;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => return Action::Quit,
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('/') => self.typing = Some(String::new()),
            KeyCode::Down | KeyCode::Char('j') => self.table.select_next(),
            KeyCode::Up | KeyCode::Char('k') => self.table.select_previous(),
            KeyCode::PageDown => self.table.scroll_down_by(10),
            KeyCode::PageUp => self.table.scroll_up_by(10),
            KeyCode::Enter => {
                if let Some(prefix) = self.selected() {
                    return Action::Show(prefix);
                }
            }
            KeyCode::Char('r') => self.confirm = self.selected(),
            _ => {}
        }
        Action::None
    }

    pub fn draw(&mut self, frame: &mut Frame) {
        let busiest = self.busiest_causes();
        let [header, sparks, table, footer] = Layout::vertical([
            Constraint::Length(4),
            Constraint::Length(busiest.len().max(1) as u16 + 2),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(frame.area());
        frame.render_widget(
            Paragraph::new(self.header()).block(Block::bordered()),
            header,
        );
        self.draw_sparklines(frame, sparks, &busiest);
        self.draw_table(frame, table);
        frame.render_widget(Paragraph::new(self.footer()), footer);
        if let Some(detail) = &self.detail {
            let area = centered(frame.area(), 80, 14);
            frame.render_widget(Clear, area);
            frame.render_widget(
                Paragraph::new(detail.as_str())
                    .wrap(Wrap { trim: false })
                    .block(Block::bordered().title(" bans show (any key closes) ")),
                area,
            );
        }
    }

    fn header(&self) -> Vec<Line<'static>> {
        let Some(view) = &self.view else {
            return vec![Line::from(
                "penaltybox top: waiting for the server's first answer",
            )];
        };
        let s = &view.stats;
        let kernel = match view.kernel {
            None => "kernel tier off".to_owned(),
            Some(k) if !k.up => "kernel tier DOWN".to_owned(),
            Some(_) => format!("kernel up, {:.0} drops/s", self.rates.kernel_dropped),
        };
        let fleet = match view.fleet_connected {
            None => "alone",
            Some(true) => "fleet connected",
            Some(false) => "fleet DISCONNECTED",
        };
        vec![
            Line::from(format!(
                "up {}  {:.1} conn/s accepted, {:.1} refused  {} sessions  {} timed out (IPv4 {}, IPv6 {})",
                humantime::format_duration(Duration::from_secs(s.uptime_secs)),
                self.rates.accepted,
                self.rates.refused,
                s.sessions_active,
                view.active_ipv4 + view.active_ipv6,
                view.active_ipv4,
                view.active_ipv6,
            )),
            Line::from(format!(
                "{kernel}  {fleet}{}",
                if self.paused { "  [paused]" } else { "" }
            )),
        ]
    }

    /// Causes with time-outs in the history, the most first.
    fn busiest_causes(&self) -> Vec<(String, u64)> {
        let mut busiest: Vec<(String, u64)> = self
            .history
            .iter()
            .map(|(cause, samples)| (cause.clone(), samples.iter().sum()))
            .filter(|(_, sum)| *sum > 0)
            .collect();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        busiest.truncate(SPARKLINES);
        busiest
    }

    fn draw_sparklines(&self, frame: &mut Frame, area: Rect, busiest: &[(String, u64)]) {
        let block = Block::bordered().title(" time-outs a second, by cause ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        if busiest.is_empty() {
            frame.render_widget(Paragraph::new("no time-outs lately"), inner);
            return;
        }
        let rows = Layout::vertical(vec![Constraint::Length(1); busiest.len()]).split(inner);
        for ((cause, _), row) in busiest.iter().zip(rows.iter()) {
            let [label, spark] =
                Layout::horizontal([Constraint::Length(26), Constraint::Min(1)]).areas(*row);
            let samples: Vec<u64> = self.history[cause].iter().copied().collect();
            let last = samples.last().copied().unwrap_or(0);
            frame.render_widget(Paragraph::new(format!("{cause:<18} {last:>5}/s")), label);
            let shown = &samples[samples.len().saturating_sub(usize::from(spark.width))..];
            frame.render_widget(Sparkline::default().data(shown), spark);
        }
    }

    fn draw_table(&mut self, frame: &mut Frame, area: Rect) {
        let now = self.view.as_ref().map_or(0, |view| view.now_ms);
        let rows: Vec<Row> = self
            .rows()
            .into_iter()
            .map(|ban| {
                let left = Duration::from_secs(ban.expires_at_ms.saturating_sub(now) / 1000);
                Row::new(vec![
                    Cell::from(ban.prefix.to_string()),
                    Cell::from(ban.cause.as_str().to_owned()),
                    Cell::from(humantime::format_duration(left).to_string()),
                    Cell::from(ban.repeat.to_string()),
                    Cell::from(display::origin(ban).to_owned()),
                    Cell::from(display::printable(ban.first_bytes.as_slice())),
                ])
            })
            .collect();
        let title = if self.filter.is_empty() {
            " newest time-outs ".to_owned()
        } else {
            format!(" newest time-outs matching {:?} ", self.filter)
        };
        let table = Table::new(
            rows,
            [
                Constraint::Length(26),
                Constraint::Length(18),
                Constraint::Length(14),
                Constraint::Length(6),
                Constraint::Length(12),
                Constraint::Min(10),
            ],
        )
        .header(
            Row::new(["prefix", "cause", "left", "repeat", "origin", "first bytes"])
                .style(Style::new().add_modifier(Modifier::BOLD)),
        )
        .row_highlight_style(Style::new().reversed())
        .block(Block::bordered().title(title));
        frame.render_stateful_widget(table, area, &mut self.table);
    }

    fn footer(&self) -> String {
        if let Some(typed) = &self.typing {
            return format!("filter (prefix or cause, Enter applies, Esc cancels): {typed}");
        }
        if let Some(prefix) = &self.confirm {
            return format!("release {prefix}? y/n");
        }
        if let Some(lost) = &self.lost {
            return lost.clone();
        }
        if let Some(status) = &self.status {
            return status.clone();
        }
        "q quit  p pause  / filter  ↑↓ select  Enter show  r release".to_owned()
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let width = width.min(area.width);
    let height = height.min(area.height);
    Rect {
        x: area.x + (area.width - width) / 2,
        y: area.y + (area.height - height) / 2,
        width,
        height,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::message::{CauseCount, KernelTierView};
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    fn ban(prefix: &str, cause: &str, bytes: &[u8]) -> BanInfo {
        BanInfo {
            prefix: prefix.parse().unwrap(),
            cause: cause.parse().unwrap(),
            first_bytes: model::FirstBytes::truncated(bytes),
            banned_at_ms: 1_000_000,
            expires_at_ms: 1_000_000 + 900_000,
            repeat: 1,
            origin: Default::default(),
        }
    }

    fn view(bad_magic: u64, accepted: u64, recent: Vec<BanInfo>) -> TopView {
        TopView {
            now_ms: 1_000_000,
            active_ipv4: recent.len() as u64,
            by_cause: vec![
                CauseCount {
                    cause: "bad-magic".into(),
                    total: bad_magic,
                },
                CauseCount {
                    cause: "port-scan".into(),
                    total: 0,
                },
            ],
            recent,
            kernel: Some(KernelTierView {
                up: true,
                dropped: accepted * 10,
            }),
            stats: protocol::message::ServerStats {
                uptime_secs: 3725,
                connections_accepted: accepted,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn screen(state: &mut TopState) -> String {
        let mut terminal = Terminal::new(TestBackend::new(120, 24)).unwrap();
        terminal.draw(|frame| state.draw(frame)).unwrap();
        let buffer = terminal.backend().buffer().clone();
        (0..buffer.area.height)
            .map(|y| {
                (0..buffer.area.width)
                    .map(|x| buffer[(x, y)].symbol())
                    .collect::<String>()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    #[test]
    fn the_screen_shows_rates_causes_and_the_newest_time_outs() {
        let mut state = TopState::default();
        state.update(view(0, 100, vec![]), Duration::from_secs(1));
        let recent = vec![
            ban("192.0.2.7/32", "bad-magic", b"GET / HTTP/1.1\r\n"),
            ban("2001:db8::/64", "port-scan", b""),
        ];
        state.update(view(20, 150, recent), Duration::from_secs(2));
        let text = screen(&mut state);
        assert!(text.contains("up 1h 2m 5s"), "{text}");
        assert!(text.contains("25.0 conn/s accepted"), "{text}");
        assert!(text.contains("kernel up, 250 drops/s"), "{text}");
        assert!(text.contains("alone"), "{text}");
        assert!(text.contains("bad-magic"), "{text}");
        assert!(text.contains("10/s"), "{text}");
        assert!(text.contains("192.0.2.7/32"), "{text}");
        assert!(text.contains("GET / HTTP/1.1.."), "{text}");
        assert!(text.contains("15m"), "{text}");
        assert!(text.contains("q quit"), "{text}");
    }

    #[test]
    fn keys_filter_select_show_and_release_after_a_yes() {
        let mut state = TopState::default();
        let recent = vec![
            ban("192.0.2.7/32", "bad-magic", b"x"),
            ban("198.51.100.9/32", "port-scan", b""),
        ];
        state.update(view(2, 1, recent), Duration::from_secs(1));
        assert_eq!(
            state.key(key(KeyCode::Enter)),
            Action::Show("192.0.2.7/32".parse().unwrap())
        );
        state.key(key(KeyCode::Char('/')));
        for c in "port".chars() {
            state.key(key(KeyCode::Char(c)));
        }
        assert!(screen(&mut state).contains("filter (prefix or cause"));
        state.key(key(KeyCode::Enter));
        let text = screen(&mut state);
        assert!(
            !text.contains("192.0.2.7/32") && text.contains("198.51.100.9/32"),
            "{text}"
        );
        assert_eq!(state.key(key(KeyCode::Char('r'))), Action::None);
        assert!(screen(&mut state).contains("release 198.51.100.9/32? y/n"));
        // Anything but y keeps it.
        assert_eq!(state.key(key(KeyCode::Char('n'))), Action::None);
        assert!(screen(&mut state).contains("198.51.100.9/32 not released"));
        state.key(key(KeyCode::Char('r')));
        assert_eq!(
            state.key(key(KeyCode::Char('y'))),
            Action::Release("198.51.100.9/32".parse().unwrap())
        );
        state.key(key(KeyCode::Char('p')));
        assert!(screen(&mut state).contains("[paused]"));
        assert_eq!(state.key(key(KeyCode::Char('q'))), Action::Quit);
        let ctrl_c = KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL);
        assert_eq!(state.key(ctrl_c), Action::Quit);
    }

    #[test]
    fn before_the_first_answer_and_when_the_server_is_gone_it_says_so() {
        let mut state = TopState::default();
        assert!(screen(&mut state).contains("waiting for the server's first answer"));
        state.lost = Some("connection lost: refused; retrying every 1s".into());
        assert!(screen(&mut state).contains("connection lost: refused; retrying"));
    }
}
