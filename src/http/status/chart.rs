//! A ring's key timeline as an inline SVG chart: one row per key, its
//! published, signing and retiring phases as bars, projected phases
//! dashed, revocations and today marked, dates along the top.
//!
//! Geometry is pure functions of the rows and the window, tested below;
//! every text in the SVG goes through maud, so it is escaped.

use maud::{Markup, html};

use super::view::Row;
use crate::{clock::UnixTime, keyring::KeyState};

const WIDTH: f64 = 960.0;
const LABEL_W: f64 = 100.0;
const RIGHT_PAD: f64 = 12.0;
const TOP: f64 = 30.0;
const ROW_H: f64 = 24.0;
const BAR_H: f64 = 14.0;
const BOTTOM: f64 = 24.0;
const HOUR: i64 = 3600;
const DAY: i64 = 86_400;

/// One bar: a key in one state over `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Segment {
    pub state: KeyState,
    pub from: UnixTime,
    pub to: UnixTime,
    /// What the scheduler will do under the current policy, not stored.
    pub projected: bool,
}

/// The row's bars inside `[from, to)`: its Published, Active and Retiring
/// spans, cut where the state changes or the projection starts. States
/// come from [`Timeline::state_at`](crate::keyring::Timeline::state_at),
/// so a revoked key's bar ends at its revocation.
pub(super) fn segments(row: &Row, from: UnixTime, to: UnixTime) -> Vec<Segment> {
    let t = &row.timeline;
    let mut points: Vec<UnixTime> = [
        Some(t.publish_at),
        Some(t.activate_at),
        t.retire_at,
        t.remove_at,
        t.revoked_at,
        row.projected_from,
    ]
    .into_iter()
    .flatten()
    .filter(|p| *p > from && *p < to)
    .collect();
    points.push(from);
    points.push(to);
    points.sort();
    points.dedup();
    let mut out: Vec<Segment> = Vec::new();
    for pair in points.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        let state = t.state_at(a);
        if !state.is_published() {
            continue;
        }
        let projected = row.projected_from.is_some_and(|p| a >= p);
        match out.last_mut() {
            Some(last) if last.to == a && last.state == state && last.projected == projected => {
                last.to = b;
            }
            _ => out.push(Segment {
                state,
                from: a,
                to: b,
                projected,
            }),
        }
    }
    out
}

/// Where `t` falls on the x axis, clamped to the plot.
fn x_of(t: UnixTime, from: UnixTime, to: UnixTime) -> f64 {
    let span = (to.as_secs() - from.as_secs()).max(1) as f64;
    let off = (t.as_secs() - from.as_secs()) as f64 / span;
    LABEL_W + off.clamp(0.0, 1.0) * (WIDTH - LABEL_W - RIGHT_PAD)
}

/// Axis ticks for the window: a round step giving at most 8 of them,
/// aligned to UTC midnight (or the hour).
pub(super) fn ticks(from: UnixTime, to: UnixTime) -> (Vec<UnixTime>, i64) {
    let span = (to.as_secs() - from.as_secs()).max(1);
    let step = [
        HOUR,
        3 * HOUR,
        6 * HOUR,
        12 * HOUR,
        DAY,
        2 * DAY,
        7 * DAY,
        14 * DAY,
        30 * DAY,
        60 * DAY,
        90 * DAY,
        180 * DAY,
        365 * DAY,
    ]
    .into_iter()
    .find(|s| span / s <= 8)
    .unwrap_or(365 * DAY);
    let first = from.as_secs().div_euclid(step) * step + step;
    let ticks = (0..)
        .map(|i| UnixTime::from_secs(first + i * step))
        .take_while(|t| *t < to)
        .collect();
    (ticks, step)
}

/// `2026-03-01`, or `03-01 06:00` when ticks are less than a day apart.
fn tick_label(t: UnixTime, step: i64) -> String {
    let s = t.to_string();
    if step >= DAY {
        s.chars().take(10).collect()
    } else {
        format!(
            "{} {}",
            s.get(5..10).unwrap_or_default(),
            s.get(11..16).unwrap_or_default()
        )
    }
}

/// `2026-03-01 06:00` (UTC).
pub(super) fn when(t: UnixTime) -> String {
    let s = t.to_string();
    match (s.get(..10), s.get(11..16)) {
        (Some(d), Some(hm)) => format!("{d} {hm}"),
        _ => s,
    }
}

fn px(v: f64) -> String {
    format!("{v:.1}")
}

fn short(label: &str) -> String {
    label.chars().take(12).collect()
}

/// The chart of `rows` over `[from, to)` with `now` marked. `ring` names
/// it for screen readers.
pub(super) fn svg(ring: &str, rows: &[Row], from: UnixTime, to: UnixTime, now: UnixTime) -> Markup {
    let height = TOP + ROW_H * rows.len() as f64 + BOTTOM;
    let (ticks, step) = ticks(from, to);
    let plot_right = WIDTH - RIGHT_PAD;
    let today = (now >= from && now < to).then(|| x_of(now, from, to));
    html! {
        svg.chart viewBox=(format!("0 0 {WIDTH} {}", px(height)))
            role="img" aria-label=(format!("Key timeline of ring {ring}")) {
            @for t in &ticks {
                @let x = px(x_of(*t, from, to));
                line.grid x1=(x) x2=(x) y1=(px(TOP - 6.0)) y2=(px(height - BOTTOM)) {}
                text.tick x=(x) y=(px(TOP - 12.0)) text-anchor="middle" { (tick_label(*t, step)) }
            }
            @for (i, row) in rows.iter().enumerate() {
                @let y = TOP + ROW_H * i as f64;
                g.row data-kid=(row.label) {
                    title { (row.label) }
                    line.lane x1=(px(LABEL_W)) x2=(px(plot_right)) y1=(px(y + ROW_H / 2.0)) y2=(px(y + ROW_H / 2.0)) {}
                    text.label x=(px(LABEL_W - 8.0)) y=(px(y + ROW_H / 2.0 + 4.0)) text-anchor="end" {
                        (short(&row.label))
                    }
                    @for s in segments(row, from, to) {
                        @let (x1, x2) = (x_of(s.from, from, to), x_of(s.to, from, to));
                        rect class=(format!("seg {}{}", s.state.name(), if s.projected { " projected" } else { "" }))
                            x=(px(x1)) y=(px(y + (ROW_H - BAR_H) / 2.0))
                            width=(px((x2 - x1).max(1.0))) height=(px(BAR_H)) rx="2" {
                            title {
                                (row.label) ": " (s.state.name()) " " (when(s.from)) " to " (when(s.to))
                                @if s.projected { " (projected)" }
                            }
                        }
                    }
                    @if let Some(r) = row.timeline.revoked_at.filter(|r| *r >= from && *r < to) {
                        @let x = px(x_of(r, from, to));
                        line.revoked x1=(x) x2=(x) y1=(px(y + 2.0)) y2=(px(y + ROW_H - 2.0)) {
                            title { (row.label) ": revoked " (when(r)) }
                        }
                    }
                }
            }
            @if let Some(x) = today {
                line.today x1=(px(x)) x2=(px(x)) y1=(px(TOP - 6.0)) y2=(px(height - BOTTOM + 4.0)) {}
                text.today-label x=(px(x)) y=(px(height - 6.0)) text-anchor="middle" {
                    "today " (when(now))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyring::Timeline;

    fn day(n: i64) -> UnixTime {
        UnixTime::from_secs(1_767_225_600 + n * DAY) // 2026-01-01
    }

    fn row(timeline: Timeline, projected_from: Option<UnixTime>) -> Row {
        Row {
            label: "kid".into(),
            timeline,
            projected_from,
        }
    }

    fn seg(state: KeyState, from: i64, to: i64, projected: bool) -> Segment {
        Segment {
            state,
            from: day(from),
            to: day(to),
            projected,
        }
    }

    #[test]
    fn a_key_is_published_then_signs_then_retires() {
        let t = Timeline {
            created_at: day(1),
            publish_at: day(1),
            activate_at: day(7),
            retire_at: Some(day(20)),
            remove_at: Some(day(27)),
            revoked_at: None,
        };
        use KeyState::*;
        assert_eq!(
            segments(&row(t, None), day(0), day(40)),
            [
                seg(Published, 1, 7, false),
                seg(Active, 7, 20, false),
                seg(Retiring, 20, 27, false)
            ]
        );
        // Clipped to the window.
        assert_eq!(
            segments(&row(t, None), day(10), day(22)),
            [seg(Active, 10, 20, false), seg(Retiring, 20, 22, false)]
        );
    }

    #[test]
    fn projection_and_revocation_cut_the_bars() {
        use KeyState::*;
        let t = Timeline {
            retire_at: Some(day(30)),
            remove_at: Some(day(37)),
            ..Timeline::immediate(day(0))
        };
        assert_eq!(
            segments(&row(t, Some(day(30))), day(0), day(40)),
            [seg(Active, 0, 30, false), seg(Retiring, 30, 37, true)]
        );
        let revoked = Timeline {
            revoked_at: Some(day(5)),
            ..Timeline::immediate(day(0))
        };
        assert_eq!(
            segments(&row(revoked, None), day(0), day(40)),
            [seg(Active, 0, 5, false)]
        );
    }

    #[test]
    fn ticks_are_round_and_at_most_eight() {
        let (t, step) = ticks(day(0), day(193));
        assert_eq!(step, 30 * DAY);
        assert!(t.len() <= 8 && t.len() >= 6, "{t:?}");
        assert!(t.iter().all(|t| t.as_secs() % step == 0));
        assert_eq!(tick_label(t[0], step).len(), 10);
        let (t, step) = ticks(
            day(0),
            day(0).saturating_add(std::time::Duration::from_secs(7200)),
        );
        assert_eq!(step, HOUR);
        assert_eq!(tick_label(t[0], step), "01-01 01:00");
    }

    #[test]
    fn today_and_every_row_are_drawn() {
        let rows = [row(Timeline::immediate(day(0)), None)];
        let svg = svg("r", &rows, day(-10), day(30), day(5)).into_string();
        assert!(svg.contains("class=\"today\""), "{svg}");
        assert!(svg.contains("data-kid=\"kid\""), "{svg}");
        assert!(svg.contains("class=\"seg active\""), "{svg}");
        assert!(svg.contains("today 2026-01-06 00:00"), "{svg}");
    }
}
