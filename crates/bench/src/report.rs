//! Output: markdown tables, JSON, CSV and an SVG plot.

use plotters::prelude::*;

use crate::estimate::Breakdown;

/// `1234567` → `1.18 MiB`.
pub fn human(bytes: usize) -> String {
    let b = bytes as f64;
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (name, size) in units {
        if b >= size as f64 {
            return format!("{:.2} {name}", b / size as f64);
        }
    }
    format!("{bytes} B")
}

/// Parses `24GiB`, `24 GB`, `1.5TiB`, `512MiB`, `1000000` (bytes).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim().replace(' ', "");
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let x: f64 = num
        .parse()
        .map_err(|_| format!("cannot read the size `{s}`"))?;
    let mult: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kib" | "k" => 1024.0,
        "mib" | "m" => 1024f64.powi(2),
        "gib" | "g" => 1024f64.powi(3),
        "tib" | "t" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        other => return Err(format!("unknown size unit `{other}` in `{s}`")),
    };
    if !(x.is_finite() && x > 0.0) {
        return Err(format!("the size `{s}` must be positive"));
    }
    Ok((x * mult) as usize)
}

/// A markdown table.
pub fn markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = format!(
        "| {} |\n|{}|\n",
        header.join(" | "),
        vec!["---"; header.len()].join("|")
    );
    for r in rows {
        out += &format!("| {} |\n", r.join(" | "));
    }
    out
}

/// CSV with a header line (fields containing commas are quoted).
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let q = |f: &str| {
        if f.contains(',') || f.contains('"') {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_string()
        }
    };
    let mut out = header.iter().map(|h| q(h)).collect::<Vec<_>>().join(",") + "\n";
    for r in rows {
        out += &(r.iter().map(|f| q(f)).collect::<Vec<_>>().join(",") + "\n");
    }
    out
}

/// Stacked bars (weights, gradients, optimizer state) per method, as SVG.
///
/// PNG is not offered: plotters' bitmap text needs the system's fontconfig/freetype, which would
/// make the binary depend on system libraries (and fail on the GPU machine); convert the SVG
/// (`rsvg-convert`, a browser) where a PNG is needed.
pub fn plot(path: &str, title: &str, rows: &[Breakdown]) -> Result<(), String> {
    let size = (220 + 110 * rows.len() as u32, 480);
    if path.to_ascii_lowercase().ends_with(".svg") {
        draw(SVGBackend::new(path, size).into_drawing_area(), title, rows)
    } else {
        Err(format!(
            "--plot {path}: the file must end in .svg (PNG would need system font libraries; convert the SVG)"
        ))
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    rows: &[Breakdown],
) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    let gib = |b: usize| b as f64 / (1u64 << 30) as f64;
    type Part = (&'static str, RGBColor, fn(&Breakdown) -> usize);
    let parts: [Part; 3] = [
        ("weights", RGBColor(70, 110, 180), |r| r.weight_bytes),
        ("gradients", RGBColor(120, 180, 90), |r| r.grad_bytes),
        ("optimizer state", RGBColor(220, 120, 60), |r| r.state_bytes),
    ];
    let top = rows.iter().map(|r| gib(r.total_bytes)).fold(0.0, f64::max) * 1.15 + 1e-9;
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0..rows.len()).into_segmented(), 0.0..top)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = rows
        .iter()
        .map(|r| match (r.rank, r.density) {
            (Some(k), _) => format!("{} r{k}", r.optimizer),
            (_, Some(d)) => format!("{} ρ{d}", r.optimizer),
            _ => r.optimizer.to_string(),
        })
        .collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("GiB")
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .draw()
        .map_err(|e| e.to_string())?;
    for (k, (label, color, get)) in parts.iter().enumerate() {
        let bars: Vec<_> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let below: usize = parts[..k].iter().map(|p| (p.2)(r)).sum();
                let (y0, y1) = (gib(below), gib(below + get(r)));
                Rectangle::new(
                    [
                        (SegmentValue::Exact(i), y0),
                        (SegmentValue::Exact(i + 1), y1),
                    ],
                    color.filled(),
                )
            })
            .collect();
        chart
            .draw_series(bars)
            .map_err(|e| e.to_string())?
            .label(*label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_bytes("24GiB").unwrap(), 24 << 30);
        assert_eq!(parse_bytes("1.5 GB").unwrap(), 1_500_000_000);
        assert_eq!(parse_bytes("512MiB").unwrap(), 512 << 20);
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("3 parsecs").is_err());
        assert!(parse_bytes("-2GiB").is_err());
    }
}
