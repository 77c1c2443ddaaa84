//! The report's figures rendered from a synthetic study with known numbers, read back as SVG
//! text and rasterised to PNG. `LTH_KEEP_PLOTS=DIR` keeps the files for a person to look at.

use super::*;
use crate::masks::Overlap;
use crate::results::{aggregate, aggregate_layers};
use lth_proto::v1 as pb;
use lth_proto::v1::ImportanceMetric as M;

/// Layers in network order, deliberately not alphabetical (the plots must keep this order).
const LAYERS: [(&str, u64); 5] = [("conv1.weight", 432), ("layer1.0.conv1.weight", 2304), ("layer2.0.conv1.weight", 4608), ("layer10.conv.weight", 9216), ("fc.weight", 640)];

/// Five metrics × two rates (0.2 for 12 levels, 0.5 for 5), 3 seeds. The output layer `fc` keeps
/// 0.9375% at the deepest level of rate 0.5 for L2, and collapses (keeps nothing) for softmax.
fn study() -> Vec<pb::ResultRow> {
    let metrics = [(M::Magnitude, 0.001), (M::L1, 0.002), (M::L2, 0.0015), (M::Softmax, 0.01), (M::MinMax, 0.003)];
    let mut rows = vec![];
    let mut job = 0;
    for seed in 1..=3u64 {
        for (rate, levels) in [(0.2f64, 12u32), (0.5, 5)] {
            for &(m, drop) in &metrics {
                for level in 0..=levels {
                    job += 1;
                    let remaining = (1.0 - rate).powi(level as i32);
                    let layers = LAYERS
                        .iter()
                        .enumerate()
                        .map(|(i, (name, total))| {
                            let mut kept = ((*total as f64) * remaining.powf(1.0 + 0.1 * i as f64)).round() as u64;
                            let mut collapsed = false;
                            if *name == "fc.weight" && rate == 0.5 && level == levels {
                                if m == M::L2 {
                                    kept = 6; // of 640: 0.9375%
                                }
                                if m == M::Softmax {
                                    kept = 0;
                                    collapsed = true;
                                }
                            }
                            pb::LayerStats { layer: name.to_string(), kept, total: *total, collapsed, ..Default::default() }
                        })
                        .collect();
                    let acc = 0.91 - drop * level as f64 * (1.0 + rate) + 0.002 * seed as f64;
                    rows.push(pb::ResultRow {
                        metric: m as i32,
                        rate,
                        seed,
                        level,
                        job_id: job,
                        result: Some(pb::LevelResult { sparsity: 1.0 - remaining, test_accuracy: acc, layers, ..Default::default() }),
                        ..Default::default()
                    });
                }
            }
        }
    }
    rows
}

/// Every `<text>` element: (x, y, font size, content).
fn svg_texts(svg: &str) -> Vec<(f64, f64, f64, String)> {
    let attr = |tag: &str, name: &str| -> f64 {
        tag.split(&format!(" {name}=\"")).nth(1).and_then(|r| r.split('"').next()).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
    };
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let (tag, rest) = t.split_once('>')?;
            let content = rest.split_once("</text>")?.0.trim().to_string();
            Some((attr(tag, "x"), attr(tag, "y"), attr(tag, "font-size"), content))
        })
        .collect()
}

fn keep(files: &[PathBuf]) {
    if let Some(dir) = std::env::var_os("LTH_KEEP_PLOTS") {
        std::fs::create_dir_all(&dir).unwrap();
        for f in files {
            std::fs::copy(f, Path::new(&dir).join(f.file_name().unwrap())).unwrap();
        }
    }
}

#[test]
fn the_accuracy_plot_names_metric_and_rate_and_its_ticks_never_collide() {
    let rows = study();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("acc.svg");
    accuracy_vs_sparsity(&aggregate(&rows), "study", &path).unwrap();
    keep(std::slice::from_ref(&path));
    let svg = std::fs::read_to_string(&path).unwrap();
    let texts = svg_texts(&svg);
    let has = |s: &str| texts.iter().any(|t| t.3 == s);
    for m in ["magnitude", "l1", "l2", "softmax", "min_max"] {
        for r in ["0.2", "0.5"] {
            assert!(has(&format!("{m} · rate {r}")), "no legend entry for {m} at rate {r}");
        }
    }
    assert!(texts.iter().any(|t| t.3.starts_with("dense: 91.")), "no dense reference in the legend");
    // The x tick labels: the texts on the lowest row of labels.
    let tick_y = texts.iter().filter(|t| t.3.parse::<f64>().is_ok()).map(|t| t.1).fold(f64::NEG_INFINITY, f64::max);
    let mut ticks: Vec<&(f64, f64, f64, String)> = texts.iter().filter(|t| t.1 == tick_y).collect();
    ticks.sort_by(|a, b| a.0.total_cmp(&b.0));
    let labels: Vec<&str> = ticks.iter().map(|t| t.3.as_str()).collect();
    assert_eq!(labels.first(), Some(&"100"), "{labels:?}");
    // The sparsest level measured: 0.5^5 = 3.125% remaining.
    assert_eq!(labels.last(), Some(&"3.13"), "{labels:?}");
    assert!(labels.len() >= 6, "{labels:?}");
    for w in ticks.windows(2) {
        let (a, b) = (w[0], w[1]);
        // Font sizes in the SVG are CSS pixels; 0.64 em per character is DejaVu Sans' digit width.
        let half = |t: &(f64, f64, f64, String)| t.3.chars().count() as f64 * 0.64 * t.2 / 2.0;
        assert!(b.0 - a.0 >= half(a) + half(b) + 4.0, "tick labels {:?} and {:?} collide: {labels:?}", a.3, b.3);
    }
    // Five metrics × two rates: one dash pattern for the second rate's lines.
    assert!(svg.contains("<polyline") || svg.contains("<path"), "no lines drawn");
}

#[test]
fn the_heatmap_is_a_grid_in_network_order_with_exact_small_values_and_a_colour_bar() {
    let rows = study();
    let layers = aggregate_layers(&rows);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("heat.svg");
    layer_heatmap(&layers, 0.5, "study", &path).unwrap();
    keep(std::slice::from_ref(&path));
    let svg = std::fs::read_to_string(&path).unwrap();
    let texts = svg_texts(&svg);
    let has = |s: &str| texts.iter().any(|t| t.3 == s);
    // 6 of 640 weights = 0.9375%: "0.93", not "1" or "0.94".
    assert!(has("0.93"), "the 0.9375% cell is not exact: {:?}", texts.iter().map(|t| &t.3).collect::<Vec<_>>());
    assert!(has("% kept") && has("0") && has("100"), "no colour bar");
    assert!(svg.contains("collapsed layer"), "the collapsed layer is not explained");
    // Layer names in the rows' order (network order), top to bottom, ".weight" dropped.
    let names = ["conv1", "layer1.0.conv1", "layer2.0.conv1", "layer10.conv", "fc"];
    let ys: Vec<f64> = names.iter().map(|n| texts.iter().find(|t| t.3 == *n).unwrap_or_else(|| panic!("no row {n}")).1).collect();
    assert!(ys.windows(2).all(|w| w[0] < w[1]), "rows not in network order: {ys:?}");
    // Five panels wrap into 3 + 2, so the picture is not a strip.
    let (w, h) = svg_size(&svg);
    assert!(w < 1900.0 && h > 300.0, "{w}×{h}");
    let panel_titles: Vec<&(f64, f64, f64, String)> = texts.iter().filter(|t| ["magnitude", "l1", "l2", "softmax", "min_max"].contains(&t.3.as_str())).collect();
    assert_eq!(panel_titles.len(), 5);
    assert_eq!(panel_titles.iter().map(|t| t.1 as i64).collect::<std::collections::BTreeSet<_>>().len(), 2, "not two rows of panels");
}

fn svg_size(svg: &str) -> (f64, f64) {
    let head = svg.split('>').next().unwrap();
    let get = |name: &str| head.split(&format!("{name}=\"")).nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
    (get("width"), get("height"))
}

#[test]
fn the_report_writes_every_figure_as_svg_and_png() {
    let rows = study();
    let overlap = Overlap {
        rate: 0.2,
        level: 12,
        metrics: vec!["magnitude".into(), "l1".into(), "l2".into()],
        fraction: vec![vec![1.0, 0.5, 0.25], vec![0.5, 1.0, 0.0093], vec![0.25, 0.0093, 1.0]],
        density: 0.0687,
        shared_by_all: Some(0.09),
        seeds: 3,
    };
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(&aggregate(&rows), &aggregate_layers(&rows), &[overlap], "study", dir.path(), ImageFormat::Both).unwrap();
    keep(&files);
    let names: Vec<String> = files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    for stem in ["accuracy_vs_sparsity", "layer_kept_fraction_rate0.2", "layer_kept_fraction_rate0.5", "ticket_overlap"] {
        for ext in ["svg", "png"] {
            assert!(names.contains(&format!("{stem}.{ext}")), "{stem}.{ext} missing: {names:?}");
        }
    }
    for f in files.iter().filter(|f| f.extension().unwrap() == "png") {
        let png = std::fs::read(f).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", f.display());
        let svg = std::fs::read_to_string(f.with_extension("svg")).unwrap();
        let (w, h) = svg_size(&svg);
        let png_w = u32::from_be_bytes(png[16..20].try_into().unwrap());
        let png_h = u32::from_be_bytes(png[20..24].try_into().unwrap());
        assert_eq!((png_w, png_h), ((w * 2.0) as u32, (h * 2.0) as u32), "{}", f.display());
    }
    let overlap_svg = std::fs::read_to_string(dir.path().join("ticket_overlap.svg")).unwrap();
    let texts: Vec<String> = svg_texts(&overlap_svg).into_iter().map(|t| t.3).collect();
    assert!(texts.contains(&"0.93".to_string()) && texts.contains(&"50.0".to_string()), "{texts:?}");
    assert!(texts.iter().any(|t| t.contains("kept by all 3 metrics: 9.0%")), "{texts:?}");
    // PNG alone: no SVG left behind.
    let png_only = tempfile::tempdir().unwrap();
    let files = write_report(&aggregate(&rows), &aggregate_layers(&rows), &[], "study", png_only.path(), ImageFormat::Png).unwrap();
    assert!(files.iter().all(|f| f.extension().unwrap() == "png"), "{files:?}");
    assert_eq!(std::fs::read_dir(png_only.path()).unwrap().count(), files.len());
}

#[test]
fn empty_results_give_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = accuracy_vs_sparsity(&[], "x", &dir.path().join("a.svg")).unwrap_err().to_string();
    assert!(err.contains("no results"), "{err}");
}

#[test]
fn percent_labels() {
    assert_eq!(percent_label(100.0), "100");
    assert_eq!(percent_label(51.2), "51.2");
    assert_eq!(percent_label(10.737), "10.7");
    assert_eq!(percent_label(3.5184), "3.52");
    assert_eq!(percent_label(0.1441), "0.14");
}

#[test]
fn kept_labels_are_exact_below_one_percent_and_never_round_to_the_ends() {
    assert_eq!(kept_label(0.0087), "0.87");
    assert_eq!(kept_label(0.00043), "0.043");
    assert_eq!(kept_label(0.000004), "0.00040");
    assert_eq!(kept_label(0.0), "0");
    assert_eq!(kept_label(1.0), "100");
    assert_eq!(kept_label(0.9996), "99.9");
    assert_eq!(kept_label(0.512), "51.2");
    assert_eq!(kept_label(0.0859), "8.59");
    assert_eq!(kept_label(0.0999), "9.99");
    assert_eq!(kept_label(0.00996), "0.99");
    assert_eq!(kept_label(0.009375), "0.93");
}

#[test]
fn every_known_metric_has_its_own_colour() {
    let colours: Vec<RGBColor> = lth_sweep::ImportanceMetric::ALL.iter().map(|m| metric_color(m.as_str())).collect();
    for (i, a) in colours.iter().enumerate() {
        for b in &colours[i + 1..] {
            assert_ne!(a, b);
        }
    }
    assert_eq!(metric_color("someday"), metric_color("someday"));
}
