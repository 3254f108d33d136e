//! Writing the Prometheus text exposition format, version 0.0.4: a `# HELP`
//! and `# TYPE` line per family, then one sample per line, label values
//! escaped so that no value can break a line or forge a label.

use std::fmt::Write as _;

use super::histogram::Snapshot;

/// The `Content-Type` of a scrape answer in this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// An exposition being built. Family and label names are our own constants;
/// only label *values* come from outside, and those are escaped.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a family. Every sample written until the next `family` call
    /// must use `name` (or, for histograms, its `_bucket`/`_sum`/`_count`).
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        debug_assert!(is_valid_name(name), "{name}");
        debug_assert!(kind != Kind::Counter || name.ends_with("_total"), "{name}");
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
    }

    /// One sample of a counter or gauge.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Into<f64>) {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", format_value(value.into()));
    }

    /// The `_bucket`, `_sum` and `_count` samples of one histogram series.
    pub fn histogram(&mut self, name: &str, labels: &[(&str, &str)], snapshot: &Snapshot) {
        let bucket = format!("{name}_bucket");
        for &(bound, count) in &snapshot.buckets {
            self.text.push_str(&bucket);
            write_labels(&mut self.text, labels, Some(&format_value(bound)));
            let _ = writeln!(self.text, " {count}");
        }
        self.text.push_str(&bucket);
        write_labels(&mut self.text, labels, Some("+Inf"));
        let _ = writeln!(self.text, " {}", snapshot.count);
        self.sample(&format!("{name}_sum"), labels, snapshot.sum_seconds);
        self.text.push_str(name);
        self.text.push_str("_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", snapshot.count);
    }

    pub fn finish(self) -> String {
        self.text
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        debug_assert!(is_valid_name(name) && !name.starts_with("__"), "{name}");
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        escape_label_value(out, value);
        out.push('"');
    }
    out.push('}');
}

/// The format's escapes for label values: backslash, double quote, newline.
fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Go's `strconv.FormatFloat(v, 'g', -1, 64)` is what Prometheus clients
/// print; Rust's shortest round-trip `Display` parses back the same way.
fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else {
        format!("{value}")
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, the metric and label name grammar.
pub fn is_valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaping() {
        let mut e = Exposition::new();
        e.family("x_total", Kind::Counter, "Line one\nback\\slash");
        e.sample("x_total", &[("a", "q\"uo\nte\\")], 3u32);
        e.sample("x_total", &[], 0.25);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP x_total Line one\\nback\\\\slash\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"uo\\nte\\\\\"} 3\nx_total 0.25\n"
        );
    }

    #[test]
    fn histogram_lines() {
        let mut e = Exposition::new();
        e.family("h_seconds", Kind::Histogram, "H");
        let snapshot = Snapshot { buckets: vec![(0.5, 1), (1.0, 2)], count: 3, sum_seconds: 4.5 };
        e.histogram("h_seconds", &[("m", "x")], &snapshot);
        let text = e.finish();
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            samples,
            [
                "h_seconds_bucket{m=\"x\",le=\"0.5\"} 1",
                "h_seconds_bucket{m=\"x\",le=\"1\"} 2",
                "h_seconds_bucket{m=\"x\",le=\"+Inf\"} 3",
                "h_seconds_sum{m=\"x\"} 4.5",
                "h_seconds_count{m=\"x\"} 3",
            ]
        );
    }

    #[test]
    fn values_and_names() {
        assert_eq!(format_value(0.0001), "0.0001");
        assert_eq!(format_value(1e21), "1000000000000000000000");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert!(is_valid_name("smb3_csi_rpc_duration_seconds"));
        assert!(is_valid_name("_x:y"));
        assert!(!is_valid_name("9x"));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("a-b"));
    }
}
