//! `signet timeline`: a ring's key timeline as a chart in the terminal, or a
//! simulated one for a fresh ring under a policy.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, bail};
use clap::Args;

use super::{
    client::{RingArgs, connect, status_error},
    parse_duration,
};
use crate::{
    clock::{Clock, SystemClock, UnixTime},
    keyring::{KeyState, Policy, Short, Timeline, project},
    pb::{self, key_admin_client::KeyAdminClient},
    rpc::policy_from_proto,
};

const DAY: u64 = 86_400;

/// Options of `signet timeline`.
#[derive(Debug, Args)]
pub struct TimelineArgs {
    #[command(flatten)]
    ring: RingArgs,
    /// Days the chart covers.
    #[arg(long, default_value_t = 200)]
    days: u64,
    /// Chart a fresh ring under the policy (defaults, or the flags below)
    /// instead of asking a server.
    #[arg(long)]
    simulate: bool,
    /// First day of a simulation, YYYY-MM-DD (default: today).
    #[arg(long, requires = "simulate")]
    start: Option<String>,
    /// Rotation period for --simulate (default 90d).
    #[arg(long, value_parser = parse_duration, requires = "simulate")]
    rotation_period: Option<Duration>,
    /// Publish lead for --simulate (default 6d).
    #[arg(long, value_parser = parse_duration, requires = "simulate")]
    publish_lead: Option<Duration>,
    /// Grace for --simulate (default 7d).
    #[arg(long, value_parser = parse_duration, requires = "simulate")]
    grace: Option<Duration>,
    /// Chart width in columns.
    #[arg(long, default_value_t = 100)]
    width: usize,
}

/// One row of the chart.
#[derive(Clone, Debug)]
pub struct Row {
    /// Left-hand label.
    pub label: String,
    /// The key's timeline.
    pub timeline: Timeline,
    /// Whether the row is projected rather than stored.
    pub projected: bool,
}

fn date(t: UnixTime) -> String {
    t.to_string().chars().take(10).collect()
}

fn parse_date(s: &str) -> anyhow::Result<UnixTime> {
    let t = humantime::parse_rfc3339(&format!("{s}T00:00:00Z"))
        .with_context(|| format!("--start {s:?}: expected a date like 2026-01-31"))?;
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    Ok(UnixTime::from_secs(i64::try_from(secs).unwrap_or(0)))
}

fn glyph(state: KeyState) -> char {
    match state {
        KeyState::Pending | KeyState::Removed => ' ',
        KeyState::Published => '.',
        KeyState::Active => '#',
        KeyState::Retiring => '=',
        KeyState::Revoked => 'x',
    }
}

/// Draws `rows` between `from` and `to`, `width` columns wide, with `now`
/// marked, followed by one line of dates per key.
pub fn render(rows: &[Row], from: UnixTime, to: UnixTime, now: UnixTime, width: usize) -> String {
    // Wide enough to read, narrow enough that no product below overflows.
    let width = width.clamp(20, 10_000);
    let from_s = i128::from(from.as_secs());
    let span = (i128::from(to.as_secs()) - from_s).max(1);
    let w = width as i128; // at most 10 000
    // Instants as i128 so the products below cannot overflow; results lie
    // between `from` and `to`, so they fit an i64 again.
    let instant = |t: i128| {
        UnixTime::from_secs(i64::try_from(t).unwrap_or(if t < 0 { i64::MIN } else { i64::MAX }))
    };
    let at = |col: usize| {
        // The middle of the column's time slice.
        instant(from_s + span * (col as i128 * 2 + 1) / (w * 2))
    };
    let col_of = |t: UnixTime| {
        let off = (i128::from(t.as_secs()) - from_s).clamp(0, span - 1);
        usize::try_from(off * w / span).unwrap_or(0)
    };
    let label_w = rows.iter().map(|r| r.label.len()).max().unwrap_or(5).max(5);
    let pad = " ".repeat(label_w + 2);
    let mut out = String::new();

    // Date axis: a label every 20 columns.
    let mut axis = pad.clone();
    let mut ticks = pad.clone();
    let mut col = 0;
    while col < width {
        let label = date(instant(from_s + span * col as i128 / w));
        if col + label.len() <= width + 10 {
            axis.push_str(&format!("{label:<20}"));
            ticks.push_str(&format!("{:<20}", "|"));
        }
        col += 20;
    }
    let _ = writeln!(out, "{}", axis.trim_end());
    let _ = writeln!(out, "{}", ticks.trim_end());

    for row in rows {
        let bar: String = (0..width)
            .map(|c| {
                let g = glyph(row.timeline.state_at(at(c)));
                if row.projected && g == '#' { '+' } else { g }
            })
            .collect();
        let _ = writeln!(out, "{:<label_w$}  {}", row.label, bar.trim_end());
    }
    if now >= from && now < to {
        let _ = writeln!(
            out,
            "{pad}{}^ today ({})",
            " ".repeat(col_of(now)),
            date(now)
        );
    }
    let _ = writeln!(
        out,
        "\nlegend: . published, not yet signing   # signing   + signing (projected)   = retired, still published   x revoked"
    );
    let _ = writeln!(out);
    for row in rows {
        let _ = writeln!(out, "{:<label_w$}  {}", row.label, describe(&row.timeline));
    }
    out
}

/// One key's dates in words. A revoked key signed only until its
/// revocation, and a successor withdrawn before its activation never
/// signed at all: neither is described as signing "until its successor".
fn describe(t: &Timeline) -> String {
    let published = format!("published {}", date(t.publish_at));
    match t.revoked_at {
        Some(r) if r <= t.activate_at => {
            format!("{published}  never signed: revoked {}", date(r))
        }
        Some(r) => {
            let until = t.retire_at.map_or(r, |retire| retire.min(r));
            format!(
                "{published}  signs {} .. {}  revoked {}",
                date(t.activate_at),
                date(until),
                date(r)
            )
        }
        None => {
            let mut line = format!(
                "{published}  signs {} .. {}",
                date(t.activate_at),
                t.retire_at
                    .map(date)
                    .unwrap_or_else(|| "(until its successor)".into())
            );
            if let Some(r) = t.remove_at {
                line.push_str(&format!("  leaves the JWKS {}", date(r)));
            }
            line
        }
    }
}

/// The chart of a fresh ring under `policy` from `start`, for `days`.
pub fn simulate(policy: &Policy, start: UnixTime, days: u64, width: usize) -> String {
    let to = start.saturating_add(Duration::from_secs(days * DAY));
    let rows: Vec<Row> = project(Timeline::immediate(start), policy, to)
        .into_iter()
        .enumerate()
        .map(|(i, timeline)| Row {
            label: format!("key {}", i + 1),
            timeline,
            projected: false,
        })
        .collect();
    let mut out = format!(
        "simulated ring from {} for {days} days: rotation_period {}, publish_lead {}, grace {}\n\n",
        date(start),
        Short(policy.rotation_period),
        Short(policy.publish_lead),
        Short(policy.grace)
    );
    out.push_str(&render(&rows, start, to, start, width));
    out
}

fn ts(t: Option<&prost_types::Timestamp>) -> Option<UnixTime> {
    t.map(|t| UnixTime::from_secs(t.seconds))
}

pub async fn run(args: TimelineArgs) -> anyhow::Result<()> {
    if args.days == 0 || args.days > 3650 {
        bail!("--days must be between 1 and 3650");
    }
    if args.simulate {
        let start = match &args.start {
            Some(s) => parse_date(s)?,
            None => SystemClock.now(),
        };
        let mut policy = Policy::default();
        if let Some(d) = args.rotation_period {
            policy.rotation_period = d;
        }
        if let Some(d) = args.publish_lead {
            policy.publish_lead = d;
        }
        if let Some(d) = args.grace {
            policy.grace = d;
        }
        let warnings = policy.validate()?;
        print!("{}", simulate(&policy, start, args.days, args.width));
        for w in warnings {
            println!("warning: {w}");
        }
        return Ok(());
    }

    let mut client = KeyAdminClient::new(connect(&args.ring.client.addr).await?);
    let ring = client
        .get_key_ring(pb::GetKeyRingRequest {
            key_ring: args.ring.ring.clone(),
        })
        .await
        .map_err(status_error)?
        .into_inner()
        .ring
        .context("the server sent no ring")?;
    let policy = policy_from_proto(&ring.policy.context("the server sent no policy")?)
        .map_err(status_error)?;
    let now = SystemClock.now();
    // A quarter of the window in the past, the rest projected ahead.
    let from = now.saturating_sub(Duration::from_secs(args.days * DAY / 4));
    let to = from.saturating_add(Duration::from_secs(args.days * DAY));
    let mut rows = Vec::new();
    let mut open = None;
    for k in &ring.keys {
        let timeline = Timeline {
            created_at: ts(k.created_at.as_ref()).unwrap_or(now),
            publish_at: ts(k.publish_at.as_ref()).unwrap_or(now),
            activate_at: ts(k.activate_at.as_ref()).unwrap_or(now),
            retire_at: ts(k.retire_at.as_ref()),
            remove_at: ts(k.remove_at.as_ref()),
            revoked_at: ts(k.revoked_at.as_ref()),
        };
        let ends = timeline.remove_at.or(timeline.revoked_at);
        if ends.is_some_and(|e| e < from) {
            continue; // long gone
        }
        if timeline.retire_at.is_none() && timeline.revoked_at.is_none() {
            open = Some(rows.len());
        }
        rows.push(Row {
            label: k.kid.chars().take(8).collect(),
            timeline,
            projected: false,
        });
    }
    if let Some(i) = open {
        let projected = project(rows[i].timeline, &policy, to);
        rows[i].timeline = projected[0];
        for (n, timeline) in projected.into_iter().enumerate().skip(1) {
            rows.push(Row {
                label: format!("next {n}"),
                timeline,
                projected: true,
            });
        }
    }
    println!(
        "ring {} ({}): rotation_period {}, publish_lead {}, grace {}\n",
        ring.name,
        ring.algorithm,
        Short(policy.rotation_period),
        Short(policy.publish_lead),
        Short(policy.grace)
    );
    print!("{}", render(&rows, from, to, now, args.width));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: i64 = 86_400;

    fn day(n: i64) -> UnixTime {
        UnixTime::from_secs(1_767_225_600 + n * D) // 2026-01-01
    }

    fn chart(rows: &[Row]) -> String {
        render(rows, day(0), day(40), day(20), 40)
    }

    fn bar<'a>(chart: &'a str, label: &str) -> &'a str {
        chart
            .lines()
            .find(|l| l.starts_with(label) && !l.contains("published"))
            .unwrap_or_default()
    }

    /// A revoked Active key signed until its revocation and is drawn
    /// revoked from then on; nothing says it signs "until its successor".
    #[test]
    fn a_revoked_key_stops_signing_when_revoked() {
        let revoked = Timeline {
            revoked_at: Some(day(10)),
            ..Timeline::immediate(day(0))
        };
        let out = chart(&[Row {
            label: "k1".into(),
            timeline: revoked,
            projected: false,
        }]);
        assert!(
            out.contains(
                "k1     published 2026-01-01  signs 2026-01-01 .. 2026-01-11  revoked 2026-01-11"
            ),
            "{out}"
        );
        assert!(!out.contains("until its successor"), "{out}");
        let bar = bar(&out, "k1 ");
        assert_eq!(bar.matches('#').count(), 10, "{bar}");
        assert!(bar.trim_end().ends_with('x'), "{bar}");
        assert!(!bar[bar.find('x').unwrap()..].contains('#'), "{bar}");
    }

    /// A successor withdrawn before it activated never signed: its row has
    /// no signing column and its dates say so.
    #[test]
    fn a_withdrawn_successor_never_signed() {
        let withdrawn = Timeline {
            activate_at: day(16),
            revoked_at: Some(day(12)),
            ..Timeline::immediate(day(10))
        };
        let out = chart(&[Row {
            label: "k2".into(),
            timeline: withdrawn,
            projected: false,
        }]);
        assert!(
            out.contains("k2     published 2026-01-11  never signed: revoked 2026-01-13"),
            "{out}"
        );
        assert!(!out.contains("signs"), "{out}");
        assert!(!bar(&out, "k2 ").contains('#'), "{out}");
    }

    /// Absurd widths and spans draw without overflowing.
    #[test]
    fn extreme_inputs_do_not_overflow() {
        let row = Row {
            label: "k".into(),
            timeline: Timeline::immediate(UnixTime::from_secs(i64::MIN)),
            projected: false,
        };
        let out = render(
            &[row],
            UnixTime::from_secs(i64::MIN),
            UnixTime::from_secs(i64::MAX),
            UnixTime::from_secs(0),
            usize::MAX,
        );
        assert!(out.contains("legend"));
    }
}
