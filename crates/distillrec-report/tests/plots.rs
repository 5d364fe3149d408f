//! The plot functions write real PNGs and SVGs: PNGs with the right signature,
//! decodable, 800×500, and different for different inputs; SVGs well-formed XML of the
//! same size holding the texts; empty or invalid input is an error.
//!
//! Set `DISTILLREC_REPORT_PLOT_DIR` to a directory to keep the images for a look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use distillrec_report::{
    aggregate, plot_budget_curve, plot_cost_curve, plot_costs, plot_learning_curves,
    plot_metric_bars, AggregateRow, BudgetPoint, LearningCurve, PlotFiles, ReferenceLine, RunCosts,
    RunSummary, TeacherCosts, COST_METRICS, PLOT_HEIGHT, PLOT_WIDTH,
};

const PNG_SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// Where to write: a kept directory if asked for, the temp dir otherwise.
fn out_dir(tmp: &tempfile::TempDir) -> PathBuf {
    match std::env::var_os("DISTILLREC_REPORT_PLOT_DIR") {
        Some(d) => {
            std::fs::create_dir_all(&d).unwrap();
            PathBuf::from(d)
        }
        None => tmp.path().to_path_buf(),
    }
}

/// Checks the signature, decodes, checks the size and returns the RGB(A) pixels.
fn decode(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(bytes[..8], PNG_SIGNATURE, "{} is not a PNG", path.display());
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let mut reader = decoder.read_info().expect("PNG header decodes");
    let mut buf = vec![0; reader.output_buffer_size().expect("buffer size")];
    let info = reader.next_frame(&mut buf).expect("PNG image decodes");
    assert_eq!((info.width, info.height), (800, 500));
    assert_eq!((PLOT_WIDTH, PLOT_HEIGHT), (800, 500));
    buf.truncate(info.buffer_size());
    buf
}

/// Parses `path` as XML, checks the root is an 800×500 `<svg>` and returns the text
/// of all its `<text>` elements, one per line.
fn svg_texts(path: &Path) -> String {
    let xml = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(xml.contains("<svg"), "{}", path.display());
    let doc = roxmltree::Document::parse(&xml)
        .unwrap_or_else(|e| panic!("{} is not XML: {e}", path.display()));
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "svg");
    assert_eq!(
        (root.attribute("width"), root.attribute("height")),
        (Some("800"), Some("500"))
    );
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Number of pixels that are not white: proof that something was drawn.
fn ink(pixels: &[u8]) -> usize {
    pixels
        .chunks(3)
        .filter(|p| p.iter().any(|&c| c < 250))
        .count()
}

fn budget_points() -> Vec<BudgetPoint> {
    let mut points = Vec::new();
    for (policy, gain) in [
        ("random", 0.10),
        ("uncertainty", 0.14),
        ("popularity", 0.08),
    ] {
        for (k, fraction) in [0.05, 0.1, 0.25, 0.5, 1.0].into_iter().enumerate() {
            points.push(BudgetPoint {
                policy: policy.to_string(),
                fraction,
                teacher_rows: (fraction * 10_000.0) as usize,
                metric: 0.20 + gain * (1.0 - (-4.0 * fraction).exp()),
                spread: if k % 2 == 0 { Some(0.006) } else { None },
                teacher_secs: None,
            });
        }
    }
    points
}

#[test]
fn budget_curve_writes_an_800x500_png_that_depends_on_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let points = budget_points();

    let refs = |b: Option<f64>| -> Vec<ReferenceLine> {
        let mut lines = vec![ReferenceLine {
            label: "teacher: llm".into(),
            value: 0.36,
        }];
        lines.extend(b.map(|value| ReferenceLine {
            label: "baseline: sasrec".into(),
            value,
        }));
        lines
    };
    let a = dir.join("budget_a.png");
    let files = plot_budget_curve(&points, "hr@10", &refs(Some(0.21)), &a).unwrap();
    assert_eq!(files, PlotFiles::for_path(&dir.join("budget_a")));
    let pa = decode(&a);
    let texts = svg_texts(&files.svg);
    for want in [
        "hr@10 vs teacher budget",
        "fraction of training rows given to the teacher",
        "100% (all rows)",
        "teacher: llm (0.3600)",
        "baseline: sasrec (0.2100)",
        "uncertainty",
    ] {
        assert!(
            texts.lines().any(|l| l == want),
            "{want:?} not in SVG texts:\n{texts}"
        );
    }
    assert!(ink(&pa) > 5_000, "the plot is nearly blank");

    // Different data, same labels: different image.
    let mut moved = points.clone();
    moved[3].metric += 0.05;
    let b = dir.join("budget_b.png");
    plot_budget_curve(&moved, "hr@10", &refs(Some(0.21)), &b).unwrap();
    assert_ne!(pa, decode(&b), "changing a point must change the image");

    // Only the baseline differs: different image.
    let c = dir.join("budget_c.png");
    plot_budget_curve(&points, "hr@10", &refs(None), &c).unwrap();
    assert_ne!(pa, decode(&c), "the baseline line must be visible");

    // Only the metric name differs: the text is really rendered.
    let d = dir.join("budget_d.png");
    plot_budget_curve(&points, "ndcg@10", &refs(Some(0.21)), &d).unwrap();
    assert_ne!(pa, decode(&d), "the title/axis text must be drawn");

    // Same input twice: same bytes (deterministic, no stray temp files).
    let a2 = dir.join("budget_a2.png");
    plot_budget_curve(&points, "hr@10", &refs(Some(0.21)), &a2).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&a2).unwrap());
    assert_eq!(
        std::fs::read(&files.svg).unwrap(),
        std::fs::read(a2.with_extension("svg")).unwrap()
    );
    if std::env::var_os("DISTILLREC_REPORT_PLOT_DIR").is_none() {
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".png") && !n.ends_with(".svg"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "temp files left behind: {leftovers:?}"
        );
    }
}

#[test]
fn budget_curve_with_a_single_point_and_flat_values_still_draws() {
    let tmp = tempfile::tempdir().unwrap();
    let path = out_dir(&tmp).join("budget_single.png");
    let points = vec![BudgetPoint {
        policy: "random".into(),
        fraction: 0.0,
        teacher_rows: 0,
        metric: 0.0,
        spread: None,
        teacher_secs: None,
    }];
    plot_budget_curve(&points, "hr@10", &[], &path).unwrap();
    assert!(ink(&decode(&path)) > 1_000);
}

/// x of every `<text>` of the SVG with exactly `want` as its text.
fn text_x(path: &Path, want: &str) -> Vec<f64> {
    let xml = std::fs::read_to_string(path).unwrap();
    let doc = roxmltree::Document::parse(&xml).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text") && n.text().map(str::trim) == Some(want))
        .filter_map(|n| n.attribute("x")?.parse().ok())
        .collect()
}

/// A legend too long for the plot (twelve curves and three reference
/// lines, as an active-distillation grid has) is drawn beside it, every
/// entry right of the x axis' last tick; a small budget's axis ends at
/// that budget, not at 100%.
#[test]
fn a_long_legend_goes_beside_the_plot_and_the_axis_ends_at_the_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let mut points = Vec::new();
    for c in 0..12 {
        for (k, fraction) in [0.02, 0.04, 0.06].into_iter().enumerate() {
            points.push(BudgetPoint {
                policy: format!("policy {c}, 6% in 3 rounds"),
                fraction,
                teacher_rows: k,
                metric: 0.10 + 0.001 * c as f64 + 0.002 * k as f64,
                spread: None,
                teacher_secs: None,
            });
        }
    }
    let refs: Vec<ReferenceLine> = ["teacher", "baseline", "converged"]
        .iter()
        .enumerate()
        .map(|(i, l)| ReferenceLine {
            label: l.to_string(),
            value: 0.09 + 0.01 * i as f64,
        })
        .collect();
    let path = dir.join("budget_long_legend.png");
    let files = plot_budget_curve(&points, "ndcg@10", &refs, &path).unwrap();
    assert!(ink(&decode(&path)) > 5_000);
    let last_tick = text_x(&files.svg, "6%");
    assert_eq!(last_tick.len(), 1, "one 6% tick: the axis ends at the data");
    assert!(text_x(&files.svg, "100% (all rows)").is_empty());
    let mut labels: Vec<String> = (0..12)
        .map(|c| format!("policy {c}, 6% in 3 rounds"))
        .collect();
    labels.push("teacher (0.0900)".into());
    for label in &labels {
        let x = text_x(&files.svg, label);
        assert_eq!(x.len(), 1, "{label} once in the legend");
        assert!(
            x[0] > last_tick[0] + 20.0,
            "{label} at {} is inside the plot",
            x[0]
        );
    }

    // eight entries or fewer stay inside, in the emptiest corner
    let path = dir.join("budget_short_legend.png");
    points.retain(|p| p.policy.starts_with("policy 1,") || p.policy.starts_with("policy 2,"));
    let files = plot_budget_curve(&points, "ndcg@10", &refs, &path).unwrap();
    let last_tick = text_x(&files.svg, "6%")[0];
    assert!(text_x(&files.svg, "policy 1, 6% in 3 rounds")[0] < last_tick);
}

/// The cost curve puts teacher seconds on the x axis (its ticks in
/// seconds, not percent), moves its points with them, and refuses a point
/// without seconds.
#[test]
fn cost_curve_draws_against_teacher_seconds_and_needs_them() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let with_secs = |scale: f64| -> Vec<BudgetPoint> {
        budget_points()
            .into_iter()
            .map(|p| BudgetPoint {
                teacher_secs: Some(p.fraction * scale),
                ..p
            })
            .collect()
    };
    let a = dir.join("cost_curve_a.png");
    let b = dir.join("cost_curve_b.png");
    let files = plot_cost_curve(&with_secs(600.0), "ndcg@10", &[], &a).unwrap();
    let texts = svg_texts(&files.svg);
    assert!(texts.contains("ndcg@10 vs teacher seconds"), "{texts}");
    assert!(
        texts.contains("600 s") || texts.contains("500 s"),
        "{texts}"
    );
    assert!(!texts.contains('%'), "{texts}");
    // the same points with the seconds of one policy tripled
    let mut skewed = with_secs(600.0);
    for p in skewed.iter_mut().filter(|p| p.policy == "random") {
        p.teacher_secs = p.teacher_secs.map(|x| 3.0 * x);
    }
    plot_cost_curve(&skewed, "ndcg@10", &[], &b).unwrap();
    assert_ne!(decode(&a), decode(&b));
    let e =
        plot_cost_curve(&budget_points(), "ndcg@10", &[], &dir.join("cost_none.png")).unwrap_err();
    let msg = format!("{e:#}");
    assert!(
        msg.contains("cost_none") && msg.contains("teacher seconds"),
        "{msg}"
    );
}

#[test]
fn empty_or_invalid_budget_input_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("empty.png");
    let err = plot_budget_curve(&[], "hr@10", &[], &path).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("no points to plot"), "{msg}");
    assert!(msg.contains("empty.png"), "{msg}");
    assert!(!path.exists());

    let mut points = budget_points();
    points[2].fraction = 1.5;
    let msg = format!(
        "{:#}",
        plot_budget_curve(&points, "hr@10", &[], &path).unwrap_err()
    );
    assert!(msg.contains("[0, 1]") && msg.contains("empty.png"), "{msg}");

    let mut points = budget_points();
    points[0].metric = f64::NAN;
    assert!(plot_budget_curve(&points, "hr@10", &[], &path).is_err());
    let inf = [ReferenceLine {
        label: "baseline".into(),
        value: f64::INFINITY,
    }];
    assert!(plot_budget_curve(&budget_points(), "hr@10", &inf, &path).is_err());
    assert!(!path.exists() && !path.with_extension("svg").exists());
}

fn runs() -> Vec<RunSummary> {
    let mut out = Vec::new();
    let specs = [
        ("pop", "baseline", [0.05, 0.05, 0.05]),
        ("sasrec", "baseline", [0.20, 0.22, 0.21]),
        ("gru4rec", "baseline", [0.17, 0.18, 0.16]),
        ("llm-teacher", "teacher", [0.30, 0.30, 0.30]),
        ("sasrec+kd", "distilled", [0.25, 0.27, 0.26]),
        (
            "sasrec+kd (no ranking loss)",
            "ablation",
            [0.23, 0.22, 0.24],
        ),
    ];
    for (label, group, hrs) in specs {
        for (seed, hr) in hrs.into_iter().enumerate() {
            if label == "llm-teacher" && seed > 0 {
                continue; // the teacher ran once: no error bar
            }
            let mut test = BTreeMap::new();
            test.insert("hr@10".to_string(), hr);
            test.insert("ndcg@10".to_string(), hr / 2.0);
            out.push(RunSummary {
                label: label.into(),
                model: label.split('+').next().unwrap().into(),
                group: group.into(),
                seed: seed as u64,
                test,
                valid: BTreeMap::new(),
                wall_secs: Some(60.0 * (seed + 1) as f64),
                teacher_rows: None,
                costs: RunCosts {
                    teacher: (group == "distilled").then_some(TeacherCosts {
                        train_secs: Some(3600.0),
                        cache_build_secs: Some(600.0),
                    }),
                    ..Default::default()
                },
            });
        }
    }
    out
}

#[test]
fn metric_bars_write_an_800x500_png_that_depends_on_the_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let rows = aggregate(&runs(), &["hr@10", "ndcg@10", "wall_secs"]);

    let a = dir.join("bars_a.png");
    let files = plot_metric_bars(&rows, "hr@10", &a).unwrap();
    let pa = decode(&a);
    let texts = svg_texts(&files.svg);
    for want in [
        "gru4rec",
        "llm-teacher",
        "sasrec+…no ranking loss)",
        "distilled",
        "hr@10",
    ] {
        assert!(
            texts.lines().any(|l| l == want),
            "{want:?} not in SVG texts:\n{texts}"
        );
    }
    assert!(ink(&pa) > 5_000, "the plot is nearly blank");

    let b = dir.join("bars_b.png");
    plot_metric_bars(&rows, "ndcg@10", &b).unwrap();
    assert_ne!(pa, decode(&b), "another metric must give another image");

    let mut changed = rows.clone();
    changed[1].mean.insert("hr@10".into(), 0.1);
    let c = dir.join("bars_c.png");
    plot_metric_bars(&changed, "hr@10", &c).unwrap();
    assert_ne!(pa, decode(&c), "changing a bar must change the image");

    // Many long labels: drawn vertically and shortened, still a valid image.
    let many: Vec<AggregateRow> = (0..14)
        .map(|i| {
            let mut r = rows[i % rows.len()].clone();
            r.label = format!("{}-with-a-rather-long-suffix-number-{i}", r.label);
            r
        })
        .collect();
    let d = dir.join("bars_many.png");
    plot_metric_bars(&many, "hr@10", &d).unwrap();
    decode(&d);

    // Cost per model through the wall_secs pseudo-metric.
    let e = dir.join("bars_wall.png");
    plot_metric_bars(&rows, "wall_secs", &e).unwrap();
    decode(&e);
}

#[test]
fn empty_bar_input_is_an_error_naming_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bars.png");
    let msg = format!("{:#}", plot_metric_bars(&[], "hr@10", &path).unwrap_err());
    assert!(
        msg.contains("no points to plot") && msg.contains("bars.png"),
        "{msg}"
    );

    let rows = aggregate(&runs(), &["hr@10"]);
    let msg = format!(
        "{:#}",
        plot_metric_bars(&rows, "mrr@10", &path).unwrap_err()
    );
    assert!(
        msg.contains("no points to plot") && msg.contains("mrr@10"),
        "{msg}"
    );
    assert!(!path.exists());
}

#[test]
fn learning_curves_write_png_and_svg_with_the_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let curve = |label: &str, gain: f64| LearningCurve {
        label: label.into(),
        points: (1..=12)
            .map(|e| (e as f64, gain * (1.0 - (-0.3 * e as f64).exp())))
            .collect(),
    };
    let curves = vec![curve("sasrec", 0.6), curve("sasrec + kd", 0.65)];
    let files = plot_learning_curves(&curves, "ndcg@10", &dir.join("curves")).unwrap();
    let pa = decode(&files.png);
    assert!(ink(&pa) > 5_000, "the plot is nearly blank");
    let texts = svg_texts(&files.svg);
    for want in ["sasrec", "sasrec + kd", "epoch", "validation ndcg@10"] {
        assert!(
            texts.lines().any(|l| l == want),
            "{want:?} not in SVG texts:\n{texts}"
        );
    }
    let one = plot_learning_curves(&curves[..1], "ndcg@10", &dir.join("curves_one")).unwrap();
    assert_ne!(pa, decode(&one.png), "each curve must be drawn");

    let empty = [LearningCurve {
        label: "x".into(),
        points: Vec::new(),
    }];
    let msg = format!(
        "{:#}",
        plot_learning_curves(&empty, "ndcg@10", &dir.join("none")).unwrap_err()
    );
    assert!(
        msg.contains("no points to plot") && msg.contains("none"),
        "{msg}"
    );
}

#[test]
fn cost_plot_stacks_teacher_seconds_and_switches_to_log_scale() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = out_dir(&tmp);
    let mut metrics = vec!["hr@10"];
    metrics.extend(COST_METRICS);
    let rows = aggregate(&runs(), &metrics);
    // distilled: 120 s mean own time + 3600 + 600 teacher = 4320 s; the range is
    // under 100× (60 s .. 4320 s), so the axis is linear.
    let linear = plot_costs(&rows, &dir.join("cost_linear")).unwrap();
    let texts = svg_texts(&linear.svg);
    assert!(texts.lines().any(|l| l == "4320 s"), "{texts}");
    assert!(
        texts.lines().any(|l| l == "training the teacher"),
        "{texts}"
    );
    assert!(texts.lines().any(|l| l == "seconds"), "{texts}");
    let pa = decode(&linear.png);

    let mut fast = rows.clone();
    fast[0].mean.insert("wall_secs".into(), 0.04);
    fast[0].mean.insert("total_secs".into(), 0.04);
    let log = plot_costs(&fast, &dir.join("cost_log")).unwrap();
    let texts = svg_texts(&log.svg);
    assert!(texts.lines().any(|l| l == "seconds (log scale)"), "{texts}");
    for decade in ["0.01", "1", "100", "1000"] {
        assert!(
            texts.lines().any(|l| l == decade),
            "{decade} tick:\n{texts}"
        );
    }
    assert_ne!(pa, decode(&log.png));

    let msg = format!("{:#}", plot_costs(&[], &dir.join("cost_none")).unwrap_err());
    assert!(msg.contains("no points to plot"), "{msg}");
}
