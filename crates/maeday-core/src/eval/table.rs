//! The `eval` report as a short readable table (what `eval` prints; the JSON report holds
//! everything).

/// A readable summary of an eval report.
pub fn eval_table(r: &serde_json::Value) -> String {
    let ms = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.1}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let f = |v: &serde_json::Value| {
        v.as_f64()
            .map(|x| format!("{x:.4}"))
            .unwrap_or_else(|| "n/a".into())
    };
    let mut s = String::new();
    s += &format!(
        "dataset      {} ({})\n",
        r["dataset"].as_str().unwrap_or(""),
        r["layout"].as_str().unwrap_or("")
    );
    s += &format!(
        "model        {} [{}]\n",
        r["model"].as_str().unwrap_or(""),
        r["engine"].as_str().unwrap_or("")
    );
    s += &format!(
        "schedule     {}  fit {}\n",
        r["schedule"].as_str().unwrap_or(""),
        r["fit"].as_str().unwrap_or("")
    );
    let c = &r["counts"];
    s += &format!(
        "images       {} scored ({} normal, {} anomalous), {} failed\n",
        c["scored"], c["normal"], c["anomalous"], c["failed"]
    );
    s += &format!(
        "scorer       {}\n",
        r["scorer"].as_str().unwrap_or("maeday")
    );
    s += &format!("image AUROC  {}\n", f(&r["image_auroc"]));
    s += &format!("pixel AUROC  {}\n", f(&r["pixel_auroc"]));
    s += &format!("PRO (0.3)    {}\n", f(&r["pro_0_3"]));
    if let Some(groups) = r["per_group"].as_object() {
        s += "per group with anomalies (vs all normal images):\n";
        for (g, v) in groups {
            s += &format!(
                "  {g:<28} {:>5} images  image AUROC {}",
                v["count"].as_u64().unwrap_or(0),
                f(&v["image_auroc"])
            );
            if let Some(share) = v["defect_pixel_share"].as_f64() {
                s += &format!(
                    "  pixel AUROC {}  PRO {}  ({:.0}% of defect pixels)",
                    f(&v["pixel_auroc"]),
                    f(&v["pro_0_3"]),
                    share * 100.0
                );
            }
            s += "\n";
        }
    }
    if let Some(sc) = r["scorers"].as_object().filter(|m| !m.is_empty()) {
        s += "each scorer and combination (image / pixel AUROC / PRO):\n";
        for (name, v) in sc {
            s += &format!(
                "  {name:<28} {} / {} / {}\n",
                f(&v["image_auroc"]),
                f(&v["pixel_auroc"]),
                f(&v["pro_0_3"])
            );
        }
    }
    let t = &r["timings"];
    s += &format!(
        "time         {:.1} s total, {} ms/image mean (p50 {}, p95 {}); inference {} ms\n",
        t["total_s"].as_f64().unwrap_or(0.0),
        ms(&t["per_image_ms"]["mean"]),
        ms(&t["per_image_ms"]["p50"]),
        ms(&t["per_image_ms"]["p95"]),
        ms(&t["inference_ms_mean"])
    );
    s
}
