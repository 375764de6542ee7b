//! Small statistics over repeated measurements, and number formatting for the report.

/// Median, extremes and quartiles of a sample.
#[derive(Clone, Copy, Debug, Default)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub n: usize,
}

impl Spread {
    /// Summarises `values` (empty: all zero).
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self::default();
        }
        v.sort_by(f64::total_cmp);
        Self {
            median: quantile(&v, 0.5),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    /// `median (min–max)` with `f` formatting each number.
    pub fn show(&self, f: impl Fn(f64) -> String) -> String {
        if self.n <= 1 {
            return f(self.median);
        }
        format!("{} ({}–{})", f(self.median), f(self.min), f(self.max))
    }
}

/// Linear-interpolated quantile of sorted `v`.
pub fn quantile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = (v.len() - 1) as f64 * q;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Nanoseconds, human scale: `850 ns`, `12.3 µs`, `4.56 ms`, `1.23 s`.
pub fn dur(ns: f64) -> String {
    if !ns.is_finite() {
        return "–".into();
    }
    let a = ns.abs();
    if a < 1e3 {
        format!("{ns:.0} ns")
    } else if a < 1e6 {
        format!("{:.3} µs", ns / 1e3)
    } else if a < 1e9 {
        format!("{:.3} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A ratio as `1.03×`.
pub fn ratio(r: f64) -> String {
    if r.is_finite() {
        format!("{r:.3}×")
    } else {
        "–".into()
    }
}

/// Bytes, human scale (binary units).
pub fn bytes(b: f64) -> String {
    if b < 1024.0 {
        format!("{b:.0} B")
    } else if b < 1024.0 * 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else if b < 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.2} GiB", b / 1024.0 / 1024.0 / 1024.0)
    }
}

/// A count with thousands separators.
pub fn count(n: f64) -> String {
    let s = format!("{:.0}", n.abs());
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0.0 { format!("-{out}") } else { out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_formats() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!((s.min, s.max, s.median), (1.0, 10.0, 2.5));
        assert_eq!(dur(850.0), "850 ns");
        assert_eq!(dur(12_345.0), "12.345 µs");
        assert_eq!(count(1_234_567.0), "1,234,567");
        assert_eq!(bytes(2048.0), "2.0 KiB");
    }
}
