//! Detection metrics: AUROC (image and pixel level), PRO, quantiles.

/// Area under the ROC curve of `scores` against `labels` (true = anomalous), with ties
/// counted as half (the Mann-Whitney statistic). `None` when either class is absent.
pub fn auroc(scores: &[f32], labels: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), labels.len(), "one label per score");
    let mut order: Vec<(f32, bool)> = scores.iter().copied().zip(labels.iter().copied()).collect();
    order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let positives = labels.iter().filter(|l| **l).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return None;
    }
    // Sum over positives of (negatives strictly below + half the negatives tied).
    let (mut below, mut sum) = (0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        let (mut pos, mut neg) = (0.0, 0.0);
        while j < order.len() && order[j].0 == order[i].0 {
            if order[j].1 {
                pos += 1.0
            } else {
                neg += 1.0
            }
            j += 1;
        }
        sum += pos * (below + 0.5 * neg);
        below += neg;
        i = j;
    }
    Some(sum / (positives * negatives))
}

/// The `q` quantile (0..=1) with linear interpolation between order statistics (numpy's
/// default). Sorts `values` in place. `None` for an empty slice.
pub fn quantile(values: &mut [f32], q: f64) -> Option<f32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable_by(f32::total_cmp);
    let pos = q.clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = (pos - lo as f64) as f32;
    Some(values[lo] + (values[hi] - values[lo]) * frac)
}

/// Label the 8-connected components of a binary mask: 0 for background, `first..` for
/// the regions (each region a new id). Returns the labels and the next free id.
pub fn label_regions(mask: &[bool], width: usize, height: usize, first: u32) -> (Vec<u32>, u32) {
    let mut labels = vec![0u32; mask.len()];
    let mut next = first;
    let mut stack = Vec::new();
    for start in 0..mask.len() {
        if !mask[start] || labels[start] != 0 {
            continue;
        }
        labels[start] = next;
        stack.push(start);
        while let Some(i) = stack.pop() {
            let (x, y) = ((i % width) as isize, (i / width) as isize);
            for dy in -1..=1 {
                for dx in -1..=1 {
                    let (nx, ny) = (x + dx, y + dy);
                    if nx < 0 || ny < 0 || nx >= width as isize || ny >= height as isize {
                        continue;
                    }
                    let j = ny as usize * width + nx as usize;
                    if mask[j] && labels[j] == 0 {
                        labels[j] = next;
                        stack.push(j);
                    }
                }
            }
        }
        next += 1;
    }
    (labels, next)
}

/// Area under the PRO curve (per-region overlap against the false-positive rate) up to
/// `fpr_limit`, divided by `fpr_limit` (1.0 is perfect), as in the MVTec AD benchmark.
/// `regions[i]` is 0 for a normal pixel, else the id of its ground-truth region.
/// One pass over the pixels sorted by descending score: lowering the threshold past a
/// defect pixel raises its region's overlap by 1/|region|, past a normal pixel the FPR.
/// `None` without normal pixels or without regions.
pub fn pro_auc(scores: &[f32], regions: &[u32], fpr_limit: f64) -> Option<f64> {
    assert_eq!(scores.len(), regions.len(), "one region id per score");
    let mut sizes: std::collections::HashMap<u32, f64> = std::collections::HashMap::new();
    for &r in regions.iter().filter(|r| **r != 0) {
        *sizes.entry(r).or_default() += 1.0;
    }
    let negatives = regions.iter().filter(|r| **r == 0).count() as f64;
    if sizes.is_empty() || negatives == 0.0 {
        return None;
    }
    let region_count = sizes.len() as f64;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut fpr, mut pro, mut area) = (0.0f64, 0.0f64, 0.0f64);
    let mut i = 0;
    while i < order.len() && fpr < fpr_limit {
        // All pixels tied at this score cross the threshold together.
        let (mut new_fpr, mut new_pro) = (fpr, pro);
        let mut j = i;
        while j < order.len() && scores[order[j]] == scores[order[i]] {
            match regions[order[j]] {
                0 => new_fpr += 1.0 / negatives,
                r => new_pro += 1.0 / (sizes[&r] * region_count),
            }
            j += 1;
        }
        if new_fpr > fpr_limit {
            // Interpolate the segment up to the limit.
            let t = (fpr_limit - fpr) / (new_fpr - fpr);
            let pro_at = pro + t * (new_pro - pro);
            area += (fpr_limit - fpr) * (pro + pro_at) / 2.0;
            fpr = fpr_limit;
        } else {
            area += (new_fpr - fpr) * (pro + new_pro) / 2.0;
            fpr = new_fpr;
        }
        pro = new_pro;
        i = j;
    }
    Some(area / fpr_limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_of_perfect_random_and_inverted_rankings() {
        let s = [0.1, 0.2, 0.8, 0.9];
        assert_eq!(auroc(&s, &[false, false, true, true]), Some(1.0));
        assert_eq!(auroc(&s, &[true, true, false, false]), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &[false, true, false, true]), Some(0.5));
        assert_eq!(auroc(&s, &[false; 4]), None);
    }

    #[test]
    fn auroc_matches_pairwise_count_with_ties() {
        let s = [0.3, 0.3, 0.1, 0.7, 0.3, 0.9, 0.2];
        let l = [true, false, false, true, true, false, false];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for i in 0..s.len() {
            for j in 0..s.len() {
                if l[i] && !l[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auroc(&s, &l).unwrap() - wins / pairs).abs() < 1e-12);
    }

    #[test]
    fn regions_are_eight_connected_components() {
        #[rustfmt::skip]
        let m = [
            true, true, false, false,
            false, false, false, true,
            false, false, true, false,
        ];
        let (labels, next) = label_regions(&m, 4, 3, 1);
        assert_eq!(next, 3);
        assert_eq!(labels, vec![1, 1, 0, 0, 0, 0, 0, 2, 0, 0, 2, 0]);
    }

    #[test]
    fn pro_is_one_for_a_perfect_map_and_weighs_regions_equally() {
        // Two regions (sizes 1 and 3) and 6 normal pixels.
        let regions = [1, 2, 2, 2, 0, 0, 0, 0, 0, 0];
        let perfect = [9.0, 8.0, 8.0, 8.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        assert!((pro_auc(&perfect, &regions, 0.3).unwrap() - 1.0).abs() < 1e-12);
        // Only the small region found before any false positive: PRO 0.5 up to FPR 1/6,
        // then the big region's pixels are tied with all normal pixels and rise linearly.
        let half = [9.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        let a = pro_auc(&half, &regions, 0.3).unwrap();
        // Tied segment from (fpr 0, pro 0.5) to (fpr 1, pro 1): at 0.3, pro = 0.65.
        assert!((a - (0.5 + 0.65) / 2.0).abs() < 1e-12, "{a}");
        assert_eq!(pro_auc(&perfect, &[0; 10], 0.3), None);
    }

    #[test]
    fn quantile_interpolates_like_numpy() {
        let mut v = [4.0, 1.0, 3.0, 2.0];
        assert_eq!(quantile(&mut v, 0.5), Some(2.5));
        assert_eq!(quantile(&mut v, 1.0), Some(4.0));
        assert_eq!(quantile(&mut v, 0.0), Some(1.0));
        assert!((quantile(&mut v, 0.9).unwrap() - 3.7).abs() < 1e-6);
        assert_eq!(quantile(&mut [], 0.5), None);
    }
}
