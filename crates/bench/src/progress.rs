//! Progress bars on stderr. They are drawn only when stderr is a terminal, so the JSON
//! report on stdout and the logs of tests and CI carry no redrawn lines.

use std::fmt::Display;
use std::sync::Mutex;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// The bar last started, so that a line printed while it is drawn does not tear it.
static CURRENT: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A bar for `of` steps of `what` (shown only when `show` and stderr is a terminal).
pub(crate) fn bar(what: &str, of: u64, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    // Within 80 columns: a longer line wraps and every redraw adds a line.
    let style = ProgressStyle::with_template("{msg:>12} [{bar:28}] {pos}/{len} {rate} eta {eta}")
        .map_or_else(
            |_| ProgressStyle::default_bar(),
            |s| s.progress_chars("=> "),
        )
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{:.0}/s", s.per_sec());
        });
    let b = ProgressBar::with_draw_target(Some(of), ProgressDrawTarget::stderr())
        .with_style(style)
        .with_message(what.to_owned());
    if let Ok(mut current) = CURRENT.lock() {
        *current = Some(b.clone());
    }
    b
}

/// Prints `line` on stderr above the bar being drawn, if any.
pub(crate) fn note(line: impl Display) {
    let current = CURRENT.lock().ok().and_then(|c| c.clone());
    match current {
        Some(b) if !b.is_finished() => b.suspend(|| eprintln!("{line}")),
        _ => eprintln!("{line}"),
    }
}
