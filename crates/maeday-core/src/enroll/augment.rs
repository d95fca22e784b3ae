//! Views of a good frame that the bank also memorises (`[enroll] augment`), and the zoomed
//! view that stands in for a held-out frame when there is only one.

use anyhow::{ensure, Result};
use image::RgbImage;

use crate::bank::store::Augmentation;

/// Refuse a list of augmentations that would memorise the same view twice: one listed
/// twice, or `dihedral` (which holds both mirror images) with `hflip` or `vflip`.
pub fn check(list: &[Augmentation]) -> Result<()> {
    let name = |a: &Augmentation| format!("{a:?}").to_lowercase();
    for (i, a) in list.iter().enumerate() {
        ensure!(!list[..i].contains(a), "{:?} is listed twice", name(a));
    }
    if list.contains(&Augmentation::Dihedral) {
        for mirror in [Augmentation::Hflip, Augmentation::Vflip] {
            ensure!(
                !list.contains(&mirror),
                "{:?} is part of \"dihedral\" (all 8 flips and quarter turns): list one of them",
                name(&mirror)
            );
        }
    }
    Ok(())
}

/// The extra views one augmentation adds for a good frame.
pub fn views(a: Augmentation, img: &RgbImage) -> Vec<RgbImage> {
    match a {
        Augmentation::Hflip => vec![image::imageops::flip_horizontal(img)],
        Augmentation::Vflip => vec![image::imageops::flip_vertical(img)],
        Augmentation::Rotate => vec![rotate(img, -5.0), rotate(img, 5.0)],
        Augmentation::Brightness => {
            vec![scale_brightness(img, 0.9), scale_brightness(img, 1.1)]
        }
        Augmentation::Dihedral => {
            let turned = image::imageops::rotate90(img);
            let mut out = vec![turned.clone()];
            for base in [img, &turned] {
                let h = image::imageops::flip_horizontal(base);
                out.push(image::imageops::flip_vertical(&h));
                out.push(h);
                out.push(image::imageops::flip_vertical(base));
            }
            out
        }
    }
}

/// Rotation about the centre by `degrees`, bilinear, edges clamped (no black corners).
fn rotate(img: &RgbImage, degrees: f32) -> RgbImage {
    let (w, h) = img.dimensions();
    let (cx, cy) = ((w as f32 - 1.0) / 2.0, (h as f32 - 1.0) / 2.0);
    let (sin, cos) = degrees.to_radians().sin_cos();
    let px = |x: i64, y: i64| {
        img.get_pixel(
            x.clamp(0, w as i64 - 1) as u32,
            y.clamp(0, h as i64 - 1) as u32,
        )
    };
    RgbImage::from_fn(w, h, |x, y| {
        let (dx, dy) = (x as f32 - cx, y as f32 - cy);
        let sx = cos * dx + sin * dy + cx;
        let sy = -sin * dx + cos * dy + cy;
        let (x0, y0) = (sx.floor(), sy.floor());
        let (fx, fy) = (sx - x0, sy - y0);
        let (x0, y0) = (x0 as i64, y0 as i64);
        let mut out = [0u8; 3];
        for (c, o) in out.iter_mut().enumerate() {
            let v = px(x0, y0)[c] as f32 * (1.0 - fx) * (1.0 - fy)
                + px(x0 + 1, y0)[c] as f32 * fx * (1.0 - fy)
                + px(x0, y0 + 1)[c] as f32 * (1.0 - fx) * fy
                + px(x0 + 1, y0 + 1)[c] as f32 * fx * fy;
            *o = v.round().clamp(0.0, 255.0) as u8;
        }
        image::Rgb(out)
    })
}

fn scale_brightness(img: &RgbImage, f: f32) -> RgbImage {
    let mut out = img.clone();
    for p in out.pixels_mut() {
        for c in &mut p.0 {
            *c = (*c as f32 * f).round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A 5% zoom into the centre: a view of a good frame that no bank row equals.
pub fn zoom(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let (zw, zh) = (
        ((w as f32 * 1.05).round() as u32).max(w + 1),
        ((h as f32 * 1.05).round() as u32).max(h + 1),
    );
    let big = image::imageops::resize(img, zw, zh, image::imageops::FilterType::Triangle);
    image::imageops::crop_imm(&big, (zw - w) / 2, (zh - h) / 2, w, h).to_image()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_keep_the_size_and_change_the_pixels() {
        let img = RgbImage::from_fn(40, 30, |x, y| {
            image::Rgb([(x * 6) as u8, (y * 8) as u8, 77])
        });
        for a in [
            Augmentation::Hflip,
            Augmentation::Vflip,
            Augmentation::Rotate,
            Augmentation::Brightness,
        ] {
            for v in views(a, &img) {
                assert_eq!(v.dimensions(), (40, 30));
                assert_ne!(v, img, "{a:?}");
            }
        }
        assert_eq!(rotate(&img, 0.0), img);
        assert_eq!(zoom(&img).dimensions(), (40, 30));
        assert!("mirror".parse::<Augmentation>().is_err());
    }

    #[test]
    fn dihedral_gives_the_seven_other_flips_and_quarter_turns() {
        // Every pixel distinct, so any two different transforms give different images.
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([(x * 10 + y) as u8, 0, 0]));
        let v = views("dihedral".parse().unwrap(), &img);
        assert_eq!(v.len(), 7);
        let mut all = v.clone();
        all.push(img.clone());
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // Each is a flip or turn: the same pixels, the corner (0, 0) lands on a corner.
        let key = |m: &RgbImage| {
            let mut p: Vec<u8> = m.pixels().map(|p| p.0[0]).collect();
            p.sort();
            p
        };
        for m in &v {
            assert_eq!(key(m), key(&img));
            let (w, h) = m.dimensions();
            assert!((w, h) == (5, 3) || (w, h) == (3, 5));
            let corners = [(0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)];
            assert!(corners.iter().any(|&(x, y)| m.get_pixel(x, y).0[0] == 0));
        }
    }

    #[test]
    fn no_view_is_memorised_twice() {
        use Augmentation::*;
        assert!(check(&[]).is_ok());
        assert!(check(&[Hflip, Vflip, Rotate, Brightness]).is_ok());
        assert!(check(&[Dihedral, Rotate, Brightness]).is_ok());
        let e = check(&[Hflip, Rotate, Hflip]).unwrap_err().to_string();
        assert_eq!(e, r#""hflip" is listed twice"#);
        for mirror in [Hflip, Vflip] {
            let e = check(&[Dihedral, mirror]).unwrap_err().to_string();
            assert!(e.contains("is part of \"dihedral\""), "{e}");
        }
    }
}
