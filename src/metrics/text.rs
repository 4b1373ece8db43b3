//! The Prometheus text exposition format, version 0.0.4: just the parts
//! this node writes.
//!
//! ```text
//! # HELP <name> <help, with \ and newline escaped>
//! # TYPE <name> counter|gauge|histogram
//! <name>{<label>="<value, with \ " and newline escaped>",...} <value>
//! ```

use std::fmt::Write;

/// Label pairs of one sample, in order.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The three kinds of metric family this node exposes.
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

/// Appends the HELP and TYPE lines of a family.
pub fn family(out: &mut String, name: &str, kind: Kind, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    let _ = writeln!(out, "\n# TYPE {name} {}", kind.as_str());
}

/// Appends one sample line.
pub fn sample(out: &mut String, name: &str, labels: Labels<'_>, value: &str) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label_value(out, v);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

/// A family with one unlabelled sample.
pub fn single(out: &mut String, name: &str, kind: Kind, help: &str, value: u64) {
    family(out, name, kind, help);
    sample(out, name, &[], &value.to_string());
}

fn escape_label_value(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// `v / 10^decimals` written exactly in decimal, without trailing zeros:
/// `decimal(150_000, 9)` is `"0.00015"`, `decimal(3, 0)` is `"3"`.
pub fn decimal(v: u64, decimals: u32) -> String {
    let scale = 10u64.pow(decimals);
    let (whole, frac) = (v / scale, v % scale);
    if frac == 0 {
        return whole.to_string();
    }
    let digits = format!("{frac:0width$}", width = decimals as usize);
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_escape_backslash_quote_and_newline() {
        let mut out = String::new();
        sample(&mut out, "m", &[("a", "x\\y\"z\nw"), ("b", "ü")], "1");
        assert_eq!(out, "m{a=\"x\\\\y\\\"z\\nw\",b=\"ü\"} 1\n");
    }

    #[test]
    fn help_escapes_backslash_and_newline_but_not_quotes() {
        let mut out = String::new();
        family(&mut out, "m_total", Kind::Counter, "a \"b\" c\\d\ne");
        assert_eq!(
            out,
            "# HELP m_total a \"b\" c\\\\d\\ne\n# TYPE m_total counter\n"
        );
    }

    #[test]
    fn a_sample_without_labels_has_no_braces() {
        let mut out = String::new();
        single(&mut out, "g", Kind::Gauge, "h", 42);
        assert_eq!(out, "# HELP g h\n# TYPE g gauge\ng 42\n");
    }

    #[test]
    fn decimals_are_exact() {
        assert_eq!(decimal(0, 9), "0");
        assert_eq!(decimal(100_000, 9), "0.0001");
        assert_eq!(decimal(150_000, 9), "0.00015");
        assert_eq!(decimal(3_276_800_000, 9), "3.2768");
        assert_eq!(decimal(10_000_150_000, 9), "10.00015");
        assert_eq!(decimal(1, 9), "0.000000001");
        assert_eq!(decimal(u64::MAX, 9), "18446744073.709551615");
        assert_eq!(decimal(4096, 0), "4096");
    }
}
