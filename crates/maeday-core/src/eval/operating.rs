//! How each scorer does at the image threshold its enrollment calibrated: the share of
//! normal images it flags (false alarms) and of anomalous images it catches, which is what
//! a device reports; the AUROC next to it is threshold-free. Measured for the scorers an
//! enrollment calibrates (one bank): the bank, few-shot MAEDAY and both ensembles, from the
//! image scores of `eval`'s scorer combinations (the same numbers serving computes).

use serde_json::{json, Map, Value};

use crate::detect::combine::Banks;
use crate::detect::fuse::{MAEDAY_NORM_PART, MAEDAY_PART};
use crate::eval::combos::Combination;
use crate::model::manifest::Thresholds;

/// The scorer combinations an enrollment calibrated, with their thresholds: `bank0`,
/// `maeday+bank0` (`ensemble`), `maeday-norm` and `maeday-norm+bank0` (`ensemble-norm`).
fn calibrated(banks: &Banks) -> Vec<(String, Thresholds)> {
    let mut out = Vec::new();
    let [bank] = &banks.scorers[..] else {
        return out;
    };
    let bank = &bank.name;
    if let Some(t) = banks.thresholds {
        out.push((bank.clone(), t.bank));
        out.push((format!("{MAEDAY_PART}+{bank}"), t.ensemble));
    }
    if let Some(p) = &banks.pixel {
        out.push((MAEDAY_NORM_PART.to_string(), p.thresholds));
    }
    if let Some(t) = banks.ensemble_norm_thresholds() {
        out.push((format!("{MAEDAY_NORM_PART}+{bank}"), t));
    }
    out
}

/// `{name: {image_threshold, false_alarm_rate, detection_rate, false_alarms, normal,
/// detected, anomalous}}` for every calibrated scorer among `combos` (a flag is `score >
/// threshold`, as serving decides); empty without a single bank.
pub fn operating_points(
    banks: Option<&Banks>,
    combos: &[Combination],
    labels: &[bool],
) -> Map<String, Value> {
    let mut out = Map::new();
    for (name, t) in banks.map(calibrated).unwrap_or_default() {
        let Some(c) = combos.iter().find(|c| c.name == name) else {
            continue;
        };
        out.insert(name, at_threshold(&c.scores, labels, t.image));
    }
    out
}

/// Flags among normal and anomalous images at `threshold`.
pub fn at_threshold(scores: &[f32], labels: &[bool], threshold: f32) -> Value {
    let (mut fp, mut normal, mut tp, mut anomalous) = (0usize, 0usize, 0usize, 0usize);
    for (s, &bad) in scores.iter().zip(labels) {
        let flagged = *s > threshold;
        if bad {
            anomalous += 1;
            tp += usize::from(flagged);
        } else {
            normal += 1;
            fp += usize::from(flagged);
        }
    }
    let rate = |k: usize, n: usize| (n > 0).then(|| k as f64 / n as f64);
    json!({
        "image_threshold": threshold,
        "false_alarm_rate": rate(fp, normal),
        "detection_rate": rate(tp, anomalous),
        "false_alarms": fp,
        "normal": normal,
        "detected": tp,
        "anomalous": anomalous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_flags_strictly_above_the_threshold() {
        let v = at_threshold(
            &[0.5, 1.0, 2.0, 3.0, 0.2],
            &[false, false, true, true, true],
            1.0,
        );
        assert_eq!(v["false_alarms"], 0);
        assert_eq!(v["detected"], 2);
        assert_eq!(v["false_alarm_rate"], 0.0);
        assert!((v["detection_rate"].as_f64().unwrap() - 2.0 / 3.0).abs() < 1e-12);
        let none = at_threshold(&[1.0], &[true], 0.0);
        assert_eq!(none["false_alarm_rate"], Value::Null);
    }
}
