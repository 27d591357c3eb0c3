//! The fan-out report as an SVG chart: latency over the run (p50 and p99 of each
//! second's publishes) beside latency by percentile, with the run's parameters and
//! results in the title.

use plotters::prelude::*;

use crate::{Error, FanoutReport, Publish, Result};

const WIDTH: u32 = 1200;
const HEIGHT: u32 = 520;
const FONT: &str = "sans-serif";

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;
type Drawn = std::result::Result<(), Box<dyn std::error::Error>>;

/// The chart of `latency_ms_per_second` and `latency_ms_by_percentile`.
pub fn latency_svg(r: &FanoutReport) -> Result<String> {
    let mut svg = String::new();
    draw(r, &mut svg).map_err(|e| Error::Plot(e.to_string()))?;
    Ok(svg)
}

fn draw(r: &FanoutReport, svg: &mut String) -> Drawn {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(64);
    head.draw_text(&title(r), &(FONT, 18).into(), (16, 12))?;
    head.draw_text(
        &results(r),
        &(FONT, 14).into_font().color(&BLACK.mix(0.75)),
        (16, 38),
    )?;
    // One latency scale for both panels, so that they compare at a glance.
    let per_second = r.latency_ms_per_second.iter().map(|l| l.p99);
    let y_end = top(per_second.chain(r.latency_ms_by_percentile.iter().map(|p| p.1)));
    let (left, right) = body.split_horizontally(WIDTH / 2);
    over_time(r, &left, y_end)?;
    by_percentile(r, &right, y_end)?;
    root.present()?;
    Ok(())
}

/// What was run.
fn title(r: &FanoutReport) -> String {
    let plural = |n: usize, one: &str| {
        format!(
            "{} {one}{}",
            grouped(n as u64),
            if n == 1 { "" } else { "s" }
        )
    };
    let via = match r.publish {
        Publish::Http => "HTTP",
        Publish::Stomp => "STOMP",
        Publish::Kafka => "Kafka",
    };
    format!(
        "fan-out: {}, {}, {} publishes/s ({via}), {}-byte bodies, {} s",
        plural(r.subscribers, "subscriber"),
        plural(r.topics, "topic"),
        grouped(r.rate),
        r.body_bytes,
        r.duration_seconds,
    )
}

/// What came of it.
fn results(r: &FanoutReport) -> String {
    format!(
        "{} deliveries/s, {} of {} delivered, {} missed; latency p50 {:.1} ms, p99 {:.1} ms, \
         p99.9 {:.1} ms, max {:.1} ms",
        grouped(r.deliveries_per_second.round() as u64),
        grouped(r.deliveries),
        grouped(r.expected_deliveries),
        grouped(r.missed),
        r.latency_ms_p50,
        r.latency_ms_p99,
        r.latency_ms_p999,
        r.latency_ms_max,
    )
}

/// p50 and p99 of the messages published in each second.
fn over_time(r: &FanoutReport, area: &Area<'_>, y_end: f64) -> Drawn {
    let s = &r.latency_ms_per_second;
    let x_end = s.last().map_or(1.0, |l| l.second as f64 + 1.0);
    let mut chart = ChartBuilder::on(area)
        .caption("latency over the run", (FONT, 16))
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)?;
    chart
        .configure_mesh()
        .x_desc("seconds since the first publish (by publish time)")
        .y_desc("latency (ms)")
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    for (name, color, at) in [
        ("p50", BLUE, (|l| l.p50) as fn(&crate::SecondLatency) -> f64),
        ("p99", RED, |l| l.p99),
    ] {
        let points = s.iter().map(|l| (l.second as f64 + 0.5, at(l)));
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)).point_size(2))?
            .label(name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    legend(&mut chart)
}

/// Latency at each percentile, the tail stretched: x is the number of nines.
fn by_percentile(r: &FanoutReport, area: &Area<'_>, y_end: f64) -> Drawn {
    let pts = &r.latency_ms_by_percentile;
    let x_end = pts.iter().map(|p| nines(p.0)).fold(1.0, f64::max).ceil();
    let mut chart = ChartBuilder::on(area)
        .caption("latency by percentile", (FONT, 16))
        .margin(16)
        .margin_right(28)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..x_end, 0f64..y_end)?;
    chart
        .configure_mesh()
        .x_desc("percentile of all deliveries (%)")
        .y_desc("latency (ms)")
        // One label per nine: 0, 90, 99, 99.9, ...
        .x_labels(x_end as usize + 1)
        .x_label_formatter(&|x| percent(*x))
        .light_line_style(BLACK.mix(0.04))
        .bold_line_style(BLACK.mix(0.12))
        .draw()?;
    let color = RGBColor(0x1f, 0x6f, 0xeb);
    chart
        .draw_series(LineSeries::new(
            pts.iter().map(|&(p, ms)| (nines(p), ms)),
            color.stroke_width(2),
        ))?
        .label(format!("{} deliveries", grouped(r.deliveries)))
        .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
    legend(&mut chart)
}

fn legend<'a, X, Y>(chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>) -> Drawn
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.3))
        .label_font((FONT, 13))
        .draw()?;
    Ok(())
}

/// Percentile `p` as "nines": 90 → 1, 99 → 2, 99.9 → 3 (0 → 0).
fn nines(p: f64) -> f64 {
    -(1.0 - p / 100.0).max(1e-9).log10()
}

/// The percentile at `x` nines, with as many decimals as it has past two nines.
fn percent(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let decimals = (x.round() as i64 - 2).max(0) as usize;
    format!("{p:.decimals$}")
}

/// The y axis' end: a little above the highest value, never an empty range.
fn top(values: impl Iterator<Item = f64>) -> f64 {
    (values.fold(0.0, f64::max) * 1.1).max(0.1)
}

/// 1234567 → "1,234,567".
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_map_to_nines_and_back() {
        assert_eq!(nines(0.0), 0.0);
        assert!((nines(99.9) - 3.0).abs() < 1e-9);
        let labels: Vec<String> = [0.0, nines(50.0), 1.0, 2.0, 3.0, 4.0]
            .into_iter()
            .map(percent)
            .collect();
        assert_eq!(labels, ["0", "50", "90", "99", "99.9", "99.99"]);
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(grouped(0), "0");
        assert_eq!(grouped(999), "999");
        assert_eq!(grouped(1000), "1,000");
        assert_eq!(grouped(1_234_567), "1,234,567");
    }
}
