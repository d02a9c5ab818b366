//! The status page's HTML: one document, styles inline, no script, no
//! external asset. Every value from state is spliced through maud, which
//! HTML-escapes it; the only unescaped text is the constant style sheet.

use std::{collections::BTreeMap, time::Duration};

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::{
    chart::{self, when},
    view::{AuditView, RingView, View},
};
use crate::{keyring::Short, telemetry::FailureCount};

/// The page's only style sheet. The Content-Security-Policy allows exactly
/// this text (by its hash), so an injected style or element would not
/// apply even if something escaped the escaping.
pub(super) const CSS: &str = "
:root{color-scheme:light;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:#1f2937;background:#f8fafc}
body{margin:0 auto;max-width:1040px;padding:20px 28px 40px}
h1{font-size:22px;margin:0 0 4px}
h2{font-size:17px;margin:0 0 8px}
code,.mono{font-family:ui-monospace,'DejaVu Sans Mono',Menlo,monospace;font-size:12px}
.summary{display:flex;gap:8px;flex-wrap:wrap;align-items:center;margin:6px 0 18px;color:#4b5563}
.pill{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;background:#e5e7eb;color:#374151}
.pill.ok{background:#dcfce7;color:#166534}.pill.bad{background:#fee2e2;color:#991b1b}
section{background:#fff;border:1px solid #e5e7eb;border-radius:8px;padding:14px 18px;margin:0 0 16px}
.meta{color:#4b5563;margin:0 0 6px}
.next{margin:0 0 8px}.next strong{color:#1d4ed8}
table{border-collapse:collapse;width:100%;margin-top:8px}
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #f1f5f9;vertical-align:top}
th{font-size:12px;color:#6b7280;font-weight:600}
th.n{text-align:right}
td.n{text-align:right;font-variant-numeric:tabular-nums}
td.d{white-space:nowrap;font-variant-numeric:tabular-nums}
.state{display:inline-block;border-radius:4px;padding:0 6px;font-size:12px;font-weight:600}
.state.pending{background:#f3f4f6;color:#6b7280}.state.published{background:#dbeafe;color:#1e40af}
.state.active{background:#2563eb;color:#fff}.state.retiring{background:#e2e8f0;color:#334155}
.state.removed{background:#f3f4f6;color:#9ca3af}.state.revoked{background:#fee2e2;color:#991b1b}
tr.reason td{color:#6b7280;word-break:break-word;padding-top:0;font-size:12.5px}
td.kid{word-break:break-all;max-width:230px}
tr:has(+tr.reason) td{border-bottom:0}
.chart{width:100%;height:auto;display:block}
.chart text{font-size:11px;fill:#4b5563}
.chart .label{font-family:ui-monospace,'DejaVu Sans Mono',monospace}
.chart .grid{stroke:#e5e7eb}.chart .lane{stroke:#f1f5f9}
.seg.published{fill:#93c5fd}.seg.active{fill:#2563eb}.seg.retiring{fill:#cbd5e1}
.seg.projected{fill-opacity:.4;stroke:#1e3a8a;stroke-width:1;stroke-dasharray:4 2}
.chart .revoked{stroke:#b91c1c;stroke-width:3}
.chart .today{stroke:#dc2626;stroke-width:1.5}.chart .today-label{fill:#dc2626;font-weight:600}
.legend{display:flex;gap:14px;flex-wrap:wrap;font-size:12px;color:#4b5563;margin:4px 0 0}
.sw{display:inline-block;width:14px;height:10px;border-radius:2px;margin-right:4px;vertical-align:middle}
.sw.published{background:#93c5fd}.sw.active{background:#2563eb}.sw.retiring{background:#cbd5e1}
.sw.projected{background:#bfdbfe;border:1px dashed #1e3a8a}.sw.revoked{background:#b91c1c;width:3px}.sw.today{background:#dc2626;width:2px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:4px 14px;margin:0}dt{color:#6b7280}dd{margin:0}
.muted{color:#6b7280}
footer{color:#6b7280;font-size:12px}
";

/// The page for `v`.
pub(super) fn render(v: &View) -> String {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content="60";
                title { "Signet status" }
                style { (PreEscaped(CSS)) }
            }
            body {
                h1 { "Signet status" }
                div.summary {
                    @if v.sealed {
                        span.pill.bad { "sealed: signing refused" }
                    } @else {
                        span.pill.ok { "unsealed" }
                    }
                    @if v.stale {
                        span.pill.bad { "key set stale: signing and JWKS refused" }
                    }
                    span.pill { "store " (v.store_kind) }
                    span.pill { (v.rings.len()) " rings" }
                    span { "as of " (when(v.now)) " UTC" }
                }
                @for ring in &v.rings {
                    (ring_section(ring, v.now))
                }
                @if v.rings.is_empty() {
                    section { p.muted { "No key ring yet." } }
                }
                (failures(&v.failures))
                (audit(v.audit.as_ref()))
                footer {
                    "Read-only; refreshes every minute. Times are UTC. "
                    "Failure counts are since this process started; "
                    code { "/metrics" } " has them as "
                    code { "signet_verification_failures_total" } "."
                }
            }
        }
    }
    .into_string()
}

fn ring_section(ring: &RingView, now: crate::clock::UnixTime) -> Markup {
    let p = &ring.policy;
    html! {
        section.ring id=(format!("ring-{}", ring.name)) data-ring=(ring.name) {
            h2 { "Ring " code { (ring.name) } }
            p.meta {
                (ring.spec) " · rotates every " (Short(p.rotation_period))
                " · published " (Short(p.publish_lead)) " before signing"
                " · kept " (Short(p.grace)) " after"
                " · tokens up to " (Short(p.max_token_ttl))
            }
            p.next {
                @match &ring.active {
                    Some(kid) => { "Signs with " code.active-kid { (kid) } ". " }
                    None => { span.pill.bad { "no key signs" } " " }
                }
                @match &ring.next_change {
                    Some((at, what)) => {
                        "Next change: " strong { (when(*at)) }
                        " (in " (until(at.as_secs() - now.as_secs())) "): " (what)
                    }
                    None => { "No change planned." }
                }
            }
            (chart::svg(&ring.name, &ring.rows, ring.from, ring.to, now))
            div.legend {
                span { span.sw.published {} "published, not signing" }
                span { span.sw.active {} "signing" }
                span { span.sw.retiring {} "retired, still published" }
                span { span.sw.projected {} "projected" }
                span { span.sw.revoked {} "revoked" }
                span { span.sw.today {} "today" }
            }
            table.keys {
                thead { tr {
                    th { "kid" } th { "state" } th { "published" } th { "signs from" }
                    th { "stops signing" } th { "leaves JWKS" }
                } }
                tbody {
                    @for k in &ring.keys {
                        tr data-kid=(k.kid) {
                            td.mono.kid { (k.kid) }
                            td {
                                span class=(format!("state {}", k.state.name())) { (k.state.name()) }
                                @if k.broken { " " span.state.revoked { "integrity check failed" } }
                            }
                            td.d { (when(k.timeline.publish_at)) }
                            td.d { (when(k.timeline.activate_at)) }
                            td.d { (opt(k.timeline.retire_at.or(k.timeline.revoked_at))) }
                            td.d { (opt(k.timeline.revoked_at.or(k.timeline.remove_at))) }
                        }
                        @if let Some(reason) = &k.reason {
                            tr.reason { td colspan="6" { "reason: " (reason) } }
                        }
                    }
                }
            }
            @if ring.older > 0 {
                p.muted { (ring.older) " older keys left the JWKS before this chart begins." }
            }
        }
    }
}

fn opt(t: Option<crate::clock::UnixTime>) -> String {
    t.map(when).unwrap_or_else(|| "—".to_owned())
}

/// A coarse duration: `3d 4h`, `2h 5m`, `under a minute`.
fn until(secs: i64) -> String {
    let secs = u64::try_from(secs).unwrap_or(0);
    if secs < 60 {
        return "under a minute".to_owned();
    }
    // Two units at most: days and hours, or hours and minutes.
    let rounded = if secs >= 86_400 {
        secs / 3600 * 3600
    } else {
        secs / 60 * 60
    };
    Short(Duration::from_secs(rounded)).to_string()
}

fn failures(counts: &[FailureCount]) -> Markup {
    // (ring, reason) -> (own Verify, reported by verifiers)
    let mut by: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    for c in counts {
        let e = by.entry((c.ring.as_str(), c.reason)).or_default();
        if c.source == "reported" {
            e.1 = e.1.saturating_add(c.count);
        } else {
            e.0 = e.0.saturating_add(c.count);
        }
    }
    html! {
        section #failures {
            h2 { "Verification failures" }
            @if by.is_empty() {
                p.muted { "None counted since this process started." }
            } @else {
                table {
                    thead { tr {
                        th { "ring" } th { "reason" }
                        th.n { "Verify RPC" } th.n { "reported by verifiers" }
                    } }
                    tbody {
                        @for ((ring, reason), (own, reported)) in &by {
                            tr data-reason=(reason) {
                                td { code { (ring) } } td { (reason) }
                                td.n { (own) } td.n { (reported) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn audit(a: Option<&AuditView>) -> Markup {
    html! {
        section #audit {
            h2 { "Audit log" }
            @match a {
                None => { p.muted { "Not reported on this listener." } }
                Some(a) => {
                    dl {
                        dt { "chain head" }
                        dd { "seq " (a.head.0) " " code { (a.head.1) } }
                        dt { "last signed checkpoint" }
                        dd {
                            @match &a.checkpoint {
                                Some((seq, hash)) => { "seq " (seq) " " code { (hash) } }
                                None => { span.muted { "none yet" } }
                            }
                        }
                        dt { "sinks" }
                        dd {
                            (a.healthy_sinks.0) " of " (a.healthy_sinks.1) " healthy"
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{
        super::view::{KeyView, chart_rows, window},
        *,
    };
    use crate::{
        clock::UnixTime,
        keyring::{KeyState, Policy, Timeline},
    };

    const HOSTILE: &str =
        "</td></table><script>alert(1)</script><img src=x onerror=alert(2)>\"'&amp;";

    fn view() -> View {
        let now = UnixTime::from_secs(1_767_225_600);
        let timeline = Timeline::immediate(now);
        let policy = Policy::default();
        let (from, to) = window(&policy, now);
        let keys = vec![KeyView {
            kid: "kid-1".into(),
            state: KeyState::Active,
            timeline,
            reason: Some(HOSTILE.into()),
            broken: false,
        }];
        let rows = chart_rows(&keys, &policy, to);
        View {
            now,
            sealed: false,
            store_kind: "sqlite",
            stale: false,
            rings: vec![RingView {
                name: "payments".into(),
                spec: "ES256".into(),
                policy,
                keys,
                older: 0,
                active: Some("kid-1".into()),
                next_change: Some((now, HOSTILE.into())),
                rows,
                from,
                to,
            }],
            failures: vec![FailureCount {
                ring: "payments".into(),
                reason: "bad_signature",
                source: "reported",
                count: 3,
            }],
            audit: None,
        }
    }

    /// A reason an operator typed is text on the page, never markup.
    #[test]
    fn hostile_text_is_escaped() {
        let page = render(&view());
        assert!(!page.contains("<script"), "{page}");
        assert!(!page.contains("<img"), "{page}");
        assert!(!page.contains(HOSTILE));
        assert!(page.contains(
            "&lt;/td&gt;&lt;/table&gt;&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;&quot;'&amp;amp;"
        ));
        // The one style element is the constant sheet.
        assert_eq!(page.matches("<style>").count(), 1);
        assert!(page.contains(&format!("<style>{CSS}</style>")));
    }

    #[test]
    fn shows_rings_keys_chart_and_failures() {
        let page = render(&view());
        assert!(page.contains("id=\"ring-payments\""));
        assert!(page.contains("<tr data-kid=\"kid-1\">"));
        assert!(page.contains("<svg class=\"chart\""));
        assert!(page.contains("data-kid=\"next 1\""), "projected rows");
        assert!(page.contains("<tr data-reason=\"bad_signature\">"));
        assert!(page.contains("Not reported on this listener."));
    }

    #[test]
    fn until_is_coarse() {
        assert_eq!(until(30), "under a minute");
        assert_eq!(until(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(until(2 * 3600 + 5 * 60 + 7), "2h 5m");
    }
}
