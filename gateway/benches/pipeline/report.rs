//! One run of the pipeline benchmark as a single static HTML page: the console's figures drawn
//! against their targets. Inline SVG and CSS only (no script, nothing fetched), so the file reads
//! the same from a CI artefact, an issue attachment or a local disk. Every number is printed on the
//! chart, because a static page has no hover. No browser measures the text, so label positions
//! assume about 7 units per character of the 12-unit font.

pub struct Throughput {
    pub label: String,
    pub per_second: f64,
    /// "msg/s" or "sagas/s"
    pub unit: &'static str,
    pub ratio_to_raw: f64,
}

pub struct Billed {
    pub operation: String,
    pub per_saga: f64,
}

pub struct Process {
    pub name: String,
    pub peak_rss_mib: f64,
    pub cpu_ms_per_saga: f64,
}

/// A figure that was not measured is NaN, and is shown as "n/a".
pub struct Figures {
    pub title: String,
    /// msg/s, the ceiling of the consumer loop's ratios
    pub raw_receive_delete: f64,
    pub raw_send: f64,
    /// msg/s, a message's whole life (send, receive, delete): the ceiling of the sagas' ratios
    pub raw_full: f64,
    pub throughput: Vec<Throughput>,
    pub ratio_target: f64,
    pub hop_sum_ms: f64,
    /// Sagas submitted one after another.
    pub sequential_ms: Vec<f64>,
    /// Sagas submitted at once.
    pub concurrent_ms: Vec<f64>,
    /// Requests per completed saga, by operation.
    pub billed: Vec<Billed>,
    pub billed_target: f64,
    pub billed_floor: f64,
    pub processes: Vec<Process>,
    pub rss_target_mib: f64,
    /// (measure, figure, target and verdict), as printed on the console.
    pub table: Vec<(String, String, String)>,
}

/// Writes the page, creating the directories above it.
pub fn write(path: &std::path::Path, figures: &Figures) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, render(figures))
}

/// The whole HTML document.
pub fn render(f: &Figures) -> String {
    let title = escape(&f.title);
    let sections = [throughput(f), latency(f), billed(f), memory(f), table(&f.table)].concat();
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n\
         <style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n{sections}</body></html>\n"
    )
}

/// `.c0`..`.c5` colour the billed operations, as SVG fill and as the legend's HTML swatches.
const STYLE: &str = "body{font:14px/1.45 system-ui,sans-serif;color:#1a202c;max-width:1000px;margin:20px auto;\
padding:0 12px}h1{font-size:19px}h2{font-size:16px;margin:26px 0 2px}p{color:#4a5568;margin:0 0 6px}\
svg{display:block;width:100%;height:auto}.row{display:flex;gap:16px}.row>svg{flex:1;min-width:0}\
svg text{font:12px system-ui,sans-serif;fill:#1a202c;paint-order:stroke;stroke:#fff;stroke-width:3px}\
text.on{fill:#fff;stroke:none}text.dim{fill:#718096}.axis{stroke:#4a5568}.grid{stroke:#e2e8f0}\
.ok{fill:#2f855a}.miss{fill:#dd6b20}.rule{stroke:#1a202c;stroke-width:1.5}.dashed{stroke-dasharray:5 4}\
.cdf{fill:none;stroke:#2b6cb0;stroke-width:2}.dot{fill:#2b6cb0}.legend{margin-left:24%;color:#1a202c}\
.legend i{display:inline-block;width:11px;height:11px;margin:0 5px 0 14px}.c0{fill:#2b6cb0;background:#2b6cb0}\
.c1{fill:#38a169;background:#38a169}.c2{fill:#d69e2e;background:#d69e2e}.c3{fill:#805ad5;background:#805ad5}\
.c4{fill:#319795;background:#319795}.c5{fill:#e53e3e;background:#e53e3e}table{border-collapse:collapse}\
th,td{padding:3px 10px;border-bottom:1px solid #e2e8f0;text-align:left}\
td:nth-child(2){text-align:right;font-variant-numeric:tabular-nums}.bad{color:#c05621;font-weight:600}";
/// Full-width charts are this wide in SVG units; the page scales them to its column.
const WIDTH: f64 = 960.0;
/// A bar chart's plot spans these x; the bar labels sit left of it.
const LEFT: f64 = 230.0;
const RIGHT: f64 = 930.0;

/// A vertical reference line: at value, labelled, dashed.
type Rule = (f64, String, bool);

fn throughput(f: &Figures) -> String {
    let bars: Vec<Bar> = f
        .throughput
        .iter()
        .map(|t| Bar {
            label: &t.label,
            segments: single(t.ratio_to_raw, t.ratio_to_raw >= f.ratio_target),
            text: format!("{} {} · {}× raw", fig(t.per_second), t.unit, fig(t.ratio_to_raw)),
        })
        .collect();
    let ceiling = "ceiling: the raw bus".to_owned();
    let target = format!("target {}×", fig(f.ratio_target));
    let rules = [(1.0, ceiling, false), (f.ratio_target, target, true)];
    let max = max_of(1.0, f.throughput.iter().map(|t| t.ratio_to_raw));
    let heading = "Throughput against the raw ceiling";
    let chart = hbars(heading, "ratio to the raw bus", &bars, max, &rules);
    let note = format!(
        "Each rate as a share of the raw bus in the same run (the line at 1): the consumer loop against raw \
         ReceiveMessage + DeleteMessageBatch ({} msg/s), saga messages (4 per saga) against a raw message's \
         send, receive and delete ({} msg/s; SendMessageBatch alone {} msg/s).",
        fig(f.raw_receive_delete),
        fig(f.raw_full),
        fig(f.raw_send)
    );
    section(heading, &note, &chart)
}

fn billed(f: &Figures) -> String {
    let measured = f.billed.iter().map(|b| b.per_saga).filter(|v| v.is_finite());
    let total = measured.reduce(|sum, v| sum + v).unwrap_or(f64::NAN);
    let segments = f
        .billed
        .iter()
        .enumerate()
        .map(|(i, b)| (b.per_saga, format!("class=\"c{}\"", i % 6), fig(b.per_saga)))
        .collect();
    let text = format!("total {}", fig(total));
    let bar = Bar {
        label: "all operations",
        segments,
        text,
    };
    let rules = [
        (f.billed_floor, format!("floor {}", fig(f.billed_floor)), true),
        (f.billed_target, format!("target ≤ {}", fig(f.billed_target)), false),
    ];
    let max = max_of(1.0, [total, f.billed_floor, f.billed_target]) * 1.08;
    let heading = "Billed requests per saga";
    let chart = hbars(heading, "requests per completed saga", &[bar], max, &rules);
    // The legend carries every figure, including those too narrow to print on their segment.
    let legend: String = f
        .billed
        .iter()
        .enumerate()
        .map(|(i, b)| (i % 6, escape(&b.operation), fig(b.per_saga)))
        .map(|(colour, operation, figure)| format!("<i class=\"c{colour}\"></i>{operation} {figure}"))
        .collect();
    let note = "Every SQS and SNS request the three services sent during the concurrent run (retries, empty \
                receives and visibility changes included), per completed saga.";
    section(heading, note, &format!("{chart}<p class=\"legend\">{legend}</p>\n"))
}

fn memory(f: &Figures) -> String {
    let bars: Vec<Bar> = f
        .processes
        .iter()
        .map(|p| Bar {
            label: &p.name,
            segments: single(p.peak_rss_mib, p.peak_rss_mib <= f.rss_target_mib),
            text: format!("{} MiB · CPU {} ms/saga", fig(p.peak_rss_mib), fig(p.cpu_ms_per_saga)),
        })
        .collect();
    let target = format!("target ≤ {} MiB", fig(f.rss_target_mib));
    let rules = [(f.rss_target_mib, target, true)];
    let max = max_of(f.rss_target_mib, f.processes.iter().map(|p| p.peak_rss_mib)) * 1.05;
    let heading = "Memory and CPU per process";
    let chart = hbars(heading, "peak RSS, MiB", &bars, max, &rules);
    let note = "Peak resident memory of each binary under the concurrent load, and the CPU time it spent per \
                completed saga.";
    section(heading, note, &chart)
}

/// Two panels, each on its own linear axis, rather than one shared (even logarithmic) axis: the
/// sequential run is judged against the hop sum at 1.1x and 1.5x, a few milliseconds apart, while
/// the concurrent run queues behind hundreds of submissions and takes tens of times longer. On a
/// shared axis the sequential curve and its markers would collapse into a few pixels.
fn latency(f: &Figures) -> String {
    let hop = f.hop_sum_ms;
    let rules = [
        (hop, format!("hop sum {} ms", fig(hop)), false),
        (1.1 * hop, format!("1.1× {}", fig(1.1 * hop)), true),
        (1.5 * hop, format!("1.5× {}", fig(1.5 * hop)), true),
    ];
    let sequential = cdf("Sagas submitted one after another", &f.sequential_ms, &rules, hop);
    let concurrent = cdf("Sagas submitted at once", &f.concurrent_ms, &[], f64::NAN);
    let note = "Cumulative share of sagas completed within x ms. Left: one after another, against the sum of \
                a saga's four bus hops (targets: p50 ≤ 1.1×, p99 ≤ 1.5×). Right: all at once, on its own axis.";
    let panels = format!("<div class=\"row\">{sequential}{concurrent}</div>\n");
    section("Saga latency, accepted to completed", note, &panels)
}

/// A step line of the share of `values` at or below x, with p50 and p99 marked (and as multiples of
/// `hop` when that is a figure).
fn cdf(title: &str, values: &[f64], rules: &[Rule], hop: f64) -> String {
    const W: f64 = 490.0;
    // The same plot area in both panels, with room above it for three reference labels and p99's.
    let (left, right, top, bottom) = (56.0, W - 16.0, 60.0, 234.0);
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let marks = || rules.iter().map(|r| r.0).filter(|v| v.is_finite());
    let lo = marks().fold(sorted.first().copied().unwrap_or(f64::INFINITY), f64::min);
    let hi = marks().fold(sorted.last().copied().unwrap_or(f64::NEG_INFINITY), f64::max);
    let s = Scale::nice((lo - 0.05 * (hi - lo)).max(0.0), hi + 0.05 * (hi - lo), left, right);
    let mut plot = Plot::new(s, top, bottom, "saga latency, ms");
    let y = |share: f64| bottom - share * (bottom - top);
    for share in [0.0, 0.25, 0.5, 0.75, 1.0] {
        plot.line("grid", left, y(share), right, y(share));
        plot.text(left - 6.0, y(share) + 4.0, "end", "", &format!("{:.0}%", share * 100.0));
    }
    let middle = (top + bottom) / 2.0;
    plot.svg += &format!(r#"<text transform="translate(14 {middle}) rotate(-90)" text-anchor="middle">"#);
    plot.svg += "share ≤ x</text>";
    if sorted.is_empty() {
        plot.text((left + right) / 2.0, middle, "middle", "dim", "no latencies recorded");
        return plot.finish(title, W, bottom + 44.0);
    }
    plot.rules(rules);
    let mut path = format!("M{:.1},{:.1}", s.x(sorted[0]), y(0.0));
    for (i, v) in sorted.iter().enumerate() {
        path += &format!("H{:.1}V{:.1}", s.x(*v), y((i + 1) as f64 / sorted.len() as f64));
    }
    plot.svg += &format!(r#"<path class="cdf" d="{path}H{right}"/>"#);
    for (p, share) in [(50.0, 0.5), (99.0, 0.99)] {
        let value = percentile(&sorted, p);
        let (x, at) = (s.x(value), y(share));
        let mut label = format!("p{p:.0} {} ms", fig(value));
        if hop.is_finite() && hop > 0.0 {
            label += &format!(" ({}× hop sum)", fig(value / hop));
        }
        plot.svg += &format!(r#"<circle class="dot" cx="{x:.1}" cy="{at:.1}" r="3.5"/>"#);
        // Right of the point the curve runs above it, left of it below: the label goes where it is not.
        match x + 8.0 + 7.0 * label.chars().count() as f64 <= right {
            true => plot.text(x + 8.0, at + 14.0, "start", "", &label),
            false => plot.text(x - 8.0, at - 6.0, "end", "", &label),
        }
    }
    plot.text(right, bottom - 8.0, "end", "dim", &format!("n = {}", sorted.len()));
    plot.finish(title, W, bottom + 44.0)
}

fn table(rows: &[(String, String, String)]) -> String {
    let mut html = String::from("<table><tr><th>measure</th><th>figure</th><th>target</th></tr>\n");
    for (measure, figure, target) in rows {
        let missed = target.contains("NOT met");
        let class = if missed { " class=\"bad\"" } else { "" };
        let (measure, figure, target) = (escape(measure), escape(figure), escape(target));
        html += &format!("<tr><td>{measure}</td><td>{figure}</td><td{class}>{target}</td></tr>\n");
    }
    section("All figures", "As printed on the console.", &(html + "</table>\n"))
}

fn section(heading: &str, note: &str, content: &str) -> String {
    let (heading, note) = (escape(heading), escape(note));
    format!("<section><h2>{heading}</h2><p>{note}</p>\n{content}</section>\n")
}

/// The one segment of a bar that is coloured by whether its figure meets its target.
fn single(value: f64, met: bool) -> Vec<(f64, String, String)> {
    let paint = if met { "class=\"ok\"" } else { "class=\"miss\"" };
    vec![(value, paint.to_owned(), String::new())]
}

/// One row of a bar chart: `segments` stacked from zero, each (value, the attribute that paints it,
/// its figure printed on it if it fits), then `text` past the end (inside it, if it would not fit).
struct Bar<'a> {
    label: &'a str,
    segments: Vec<(f64, String, String)>,
    text: String,
}

/// Horizontal bars on a 0..`max` axis, with reference lines.
fn hbars(title: &str, axis_label: &str, bars: &[Bar], max: f64, rules: &[Rule]) -> String {
    let top = 8.0 + 14.0 * rules.len() as f64;
    let bottom = top + 30.0 * bars.len().max(1) as f64;
    let mut plot = Plot::new(Scale::nice(0.0, max, LEFT, RIGHT), top, bottom, axis_label);
    for (i, bar) in bars.iter().enumerate() {
        let baseline = top + 30.0 * i as f64 + 19.0;
        plot.text(LEFT - 8.0, baseline, "end", "", bar.label);
        let mut at = 0.0;
        for (value, paint, figure) in bar.segments.iter().filter(|s| s.0.is_finite() && s.0 > 0.0) {
            let (x0, x1) = (plot.s.x(at), plot.s.x(at + value));
            plot.rect(x0, baseline - 14.0, x1 - x0, paint);
            if x1 - x0 > 12.0 + 7.0 * figure.chars().count() as f64 {
                plot.text((x0 + x1) / 2.0, baseline, "middle", "on", figure);
            }
            at += value;
        }
        let end = plot.s.x(at);
        match end + 7.0 * bar.text.chars().count() as f64 > RIGHT {
            true => plot.text(end - 6.0, baseline, "end", "on", &bar.text),
            false => plot.text(end + 6.0, baseline, "start", "", &bar.text),
        }
    }
    if bars.is_empty() {
        plot.text(LEFT + 6.0, top + 19.0, "start", "dim", "no figures recorded");
    }
    plot.rules(rules);
    plot.finish(title, WIDTH, bottom + 44.0)
}

/// A chart being drawn: the scale of its x axis, the top and bottom of its plot, the SVG so far.
struct Plot {
    s: Scale,
    top: f64,
    bottom: f64,
    svg: String,
}

impl Plot {
    /// A plot with its x axis drawn: a grid line and a number at each step, and the axis label.
    fn new(s: Scale, top: f64, bottom: f64, axis_label: &str) -> Plot {
        let mut plot = Plot {
            s,
            top,
            bottom,
            svg: String::new(),
        };
        let decimals = (-s.step.log10().floor()).max(0.0) as usize;
        for i in 0..=((s.hi - s.lo) / s.step).round() as usize {
            let v = s.lo + s.step * i as f64;
            plot.line("grid", s.x(v), top, s.x(v), bottom);
            plot.text(s.x(v), bottom + 15.0, "middle", "", &format!("{v:.decimals$}"));
        }
        plot.line("axis", s.left, bottom, s.right, bottom);
        plot.text((s.left + s.right) / 2.0, bottom + 34.0, "middle", "dim", axis_label);
        plot
    }

    /// Reference lines, each label on a row of its own above the plot so that lines close together
    /// do not overprint each other's labels; a value that is not a figure draws nothing.
    fn rules(&mut self, rules: &[Rule]) {
        for (i, (value, label, dashed)) in rules.iter().enumerate().filter(|(_, r)| r.0.is_finite()) {
            let x = self.s.x(*value);
            let class = if *dashed { "rule dashed" } else { "rule" };
            self.line(class, x, self.top - 4.0, x, self.bottom);
            let anchor = match x {
                x if x > self.s.right - 120.0 => "end",
                x if x < self.s.left + 120.0 => "start",
                _ => "middle",
            };
            self.text(x, 12.0 + 14.0 * i as f64, anchor, "", label);
        }
    }

    fn line(&mut self, class: &str, x1: f64, y1: f64, x2: f64, y2: f64) {
        self.svg += &format!(r#"<line class="{class}" x1="{x1:.1}" y1="{y1:.1}" x2="{x2:.1}" y2="{y2:.1}"/>"#);
    }

    /// A bar 20 high; `paint` is the attribute that colours it.
    fn rect(&mut self, x: f64, y: f64, width: f64, paint: &str) {
        self.svg += &format!(r#"<rect x="{x:.1}" y="{y:.1}" width="{width:.1}" height="20" {paint}/>"#);
    }

    fn text(&mut self, x: f64, y: f64, anchor: &str, class: &str, content: &str) {
        let content = escape(content);
        self.svg += &format!(r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" class="{class}">{content}</text>"#);
    }

    fn finish(self, title: &str, width: f64, height: f64) -> String {
        let (title, body) = (escape(title), self.svg);
        format!("<svg viewBox=\"0 0 {width} {height:.0}\" role=\"img\"><title>{title}</title>{body}</svg>\n")
    }
}

/// A linear map of `lo..hi` onto x from `left` to `right`, with axis numbers every `step`.
#[derive(Clone, Copy)]
struct Scale {
    lo: f64,
    hi: f64,
    step: f64,
    left: f64,
    right: f64,
}

impl Scale {
    /// `lo..hi` widened to whole steps of 1, 2 or 5 times a power of ten, about five of them. An
    /// empty range is widened around its value (not below zero if it was not); one that is not a
    /// figure becomes 0..1.
    fn nice(lo: f64, hi: f64, left: f64, right: f64) -> Scale {
        let (lo, hi) = match (lo.is_finite() && hi.is_finite(), lo.abs().max(1.0) * 0.1) {
            (false, _) => (0.0, 1.0),
            (true, _) if hi > lo => (lo, hi),
            (true, pad) => ((lo - pad).max(lo.min(0.0)), hi + pad),
        };
        let raw = (hi - lo) / 5.0;
        let magnitude = 10f64.powf(raw.log10().floor());
        let steps = [1.0, 2.0, 5.0, 10.0].map(|m| m * magnitude);
        let step = steps.into_iter().find(|step| *step >= raw).unwrap_or(steps[3]);
        let (lo, hi) = ((lo / step).floor() * step, (hi / step).ceil() * step);
        Scale {
            lo,
            hi,
            step,
            left,
            right,
        }
    }

    fn x(self, v: f64) -> f64 {
        self.left + (v.clamp(self.lo, self.hi) - self.lo) / (self.hi - self.lo) * (self.right - self.left)
    }
}

/// The largest of `start` and the figures among `values`.
fn max_of(start: f64, values: impl IntoIterator<Item = f64>) -> f64 {
    values.into_iter().filter(|v| v.is_finite()).fold(start, f64::max)
}

/// Nearest rank, as the bench computes its console figures, so that the page and the console agree.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    let rank = ((p / 100.0) * last as f64).round() as usize;
    sorted.get(rank.min(last)).copied().unwrap_or(f64::NAN)
}

/// Three significant figures or so, or "n/a" for a figure that was not measured (NaN, infinite).
fn fig(v: f64) -> String {
    match v.abs() {
        a if !a.is_finite() => "n/a".to_owned(),
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 10.0 => format!("{v:.1}"),
        _ => format!("{v:.2}"),
    }
}

/// For text and attribute values alike.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
