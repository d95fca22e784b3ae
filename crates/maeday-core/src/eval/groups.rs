//! `eval`'s figures per defect group (`MT_Crack`, `bottle/broken_large`, ...): each group's
//! images against every normal image, so a group that holds most of the defect pixels (and
//! so most of a pooled pixel AUROC) is visible as such.

use serde_json::{json, Map, Value};

use crate::eval::roc::{auroc, pro_auc};

/// What `eval` kept of every scored image, in scoring order.
pub struct Images<'a> {
    pub groups: &'a [String],
    pub anomalous: &'a [bool],
}

/// The sampled pixels: their ground-truth region (0 = normal) and the index of their image.
pub struct Pixels<'a> {
    pub regions: &'a [u32],
    pub images: &'a [u32],
}

/// Each group that holds anomalous images: image AUROC of `scores` and, with `pixels`,
/// pixel AUROC and PRO (up to 30% false positives) of `pixel_scores` over the group's
/// images and every normal image, and the group's share of all sampled defect pixels.
pub fn per_group(
    images: &Images,
    scores: &[f32],
    pixels: Option<&Pixels>,
    pixel_scores: &[f32],
) -> Map<String, Value> {
    let mut names: Vec<&String> = images
        .groups
        .iter()
        .zip(images.anomalous)
        .filter(|(_, a)| **a)
        .map(|(g, _)| g)
        .collect();
    names.sort();
    names.dedup();
    let mut out = Map::new();
    for g in names {
        let in_group = |i: usize| !images.anomalous[i] || &images.groups[i] == g;
        let pick: Vec<usize> = (0..scores.len()).filter(|&i| in_group(i)).collect();
        let count = images.groups.iter().filter(|x| *x == g).count();
        let a = auroc(
            &pick.iter().map(|&i| scores[i]).collect::<Vec<_>>(),
            &pick
                .iter()
                .map(|&i| images.anomalous[i])
                .collect::<Vec<_>>(),
        );
        let mut entry = json!({"count": count, "image_auroc": a});
        if let Some(px) = pixels.filter(|p| p.regions.len() == pixel_scores.len()) {
            let keep: Vec<usize> = (0..pixel_scores.len())
                .filter(|&p| in_group(px.images[p] as usize))
                .collect();
            let regions: Vec<u32> = keep.iter().map(|&p| px.regions[p]).collect();
            let values: Vec<f32> = keep.iter().map(|&p| pixel_scores[p]).collect();
            let labels: Vec<bool> = regions.iter().map(|r| *r != 0).collect();
            // Normal images have no defect pixels: these are the group's own.
            let own = labels.iter().filter(|l| **l).count();
            let all = px.regions.iter().filter(|r| **r != 0).count();
            entry["pixel_auroc"] = json!(auroc(&values, &labels));
            entry["pro_0_3"] = json!(pro_auc(&values, &regions, 0.3));
            entry["defect_pixel_share"] = json!((all > 0).then(|| own as f64 / all as f64));
        }
        out.insert(g.clone(), entry);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_is_its_images_against_every_normal_image() {
        let groups: Vec<String> = ["good", "crack", "good", "uneven", "uneven"]
            .map(String::from)
            .to_vec();
        let anomalous = [false, true, false, true, true];
        let images = Images {
            groups: &groups,
            anomalous: &anomalous,
        };
        // The crack ranks above both normal images; each uneven image only above one.
        let scores = [0.1, 0.9, 0.5, 0.3, 0.6];
        // Two pixels per image: the crack image has one defect pixel (region 1), each
        // uneven image two (regions 2, 3): uneven holds 4 of the 5 defect pixels.
        let regions = [0, 0, 1, 0, 0, 0, 2, 2, 3, 3];
        let image_of = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4];
        let pixel_scores = [0.1, 0.2, 0.9, 0.1, 0.3, 0.2, 0.5, 0.05, 0.4, 0.4];
        let pixels = Pixels {
            regions: &regions,
            images: &image_of,
        };
        let out = per_group(&images, &scores, Some(&pixels), &pixel_scores);
        assert_eq!(out.keys().collect::<Vec<_>>(), ["crack", "uneven"]);
        let crack = &out["crack"];
        assert_eq!(crack["count"], 1);
        assert_eq!(crack["image_auroc"].as_f64(), Some(1.0));
        // Its one defect pixel (0.9) over its other pixel and the normal images' four.
        assert_eq!(crack["pixel_auroc"].as_f64(), Some(1.0));
        assert_eq!(crack["defect_pixel_share"].as_f64(), Some(0.2));
        let uneven = &out["uneven"];
        assert_eq!(uneven["count"], 2);
        // 0.3 and 0.6 against 0.1 and 0.5: 3 of 4 pairs.
        assert_eq!(uneven["image_auroc"].as_f64(), Some(0.75));
        // Defect pixels 0.5, 0.05, 0.4, 0.4 against 0.1, 0.2, 0.3, 0.2: 4 + 0 + 4 + 4 of 16.
        assert_eq!(uneven["pixel_auroc"].as_f64(), Some(0.75));
        assert_eq!(uneven["defect_pixel_share"].as_f64(), Some(0.8));
        // Without masks: image figures only.
        let out = per_group(&images, &scores, None, &[]);
        assert!(out["uneven"].get("pixel_auroc").is_none());
    }
}
