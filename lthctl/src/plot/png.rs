//! SVG → PNG with resvg (pure Rust: no cairo, no browser), at twice the SVG's size.
//!
//! plotters writes `font-family="sans-serif"`; resvg resolves it through the system's fonts
//! (fontdb). The generic family is pointed at the first common sans-serif font installed, and a
//! machine without any font gets an error that says what to install, not a PNG without text.

use anyhow::{anyhow, Context, Result};
use std::path::Path;

/// Pixels per SVG unit: crisp on high-density screens and in slides.
pub const SCALE: f32 = 2.0;

const SANS_SERIF: [&str; 6] = ["DejaVu Sans", "Liberation Sans", "Noto Sans", "Arial", "Helvetica", "FreeSans"];

fn options() -> Result<resvg::usvg::Options<'static>> {
    let mut opt = resvg::usvg::Options::default();
    let db = opt.fontdb_mut();
    db.load_system_fonts();
    if db.is_empty() {
        return Err(anyhow!(
            "no fonts found for the PNG's text: install one (Debian/Ubuntu: apt-get install fonts-dejavu-core), or write SVG only (--format svg)"
        ));
    }
    let families: Vec<String> = db.faces().flat_map(|f| f.families.iter().map(|(name, _)| name.clone())).collect();
    let family = SANS_SERIF.iter().find(|want| families.iter().any(|f| f == *want)).map(|s| s.to_string()).unwrap_or_else(|| families[0].clone());
    db.set_sans_serif_family(family);
    Ok(opt)
}

/// Renders SVG text to PNG bytes.
pub fn svg_to_png(svg: &[u8]) -> Result<Vec<u8>> {
    let opt = options()?;
    let tree = resvg::usvg::Tree::from_data(svg, &opt).context("reading the SVG to rasterise")?;
    let size = tree.size();
    let (w, h) = ((size.width() * SCALE).ceil() as u32, (size.height() * SCALE).ceil() as u32);
    let mut pixmap = resvg::tiny_skia::Pixmap::new(w, h).ok_or_else(|| anyhow!("cannot allocate a {w}×{h} image"))?;
    resvg::render(&tree, resvg::tiny_skia::Transform::from_scale(SCALE, SCALE), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| anyhow!("encoding the PNG: {e}"))
}

pub fn svg_file_to_png(svg: &Path, png: &Path) -> Result<()> {
    let data = std::fs::read(svg).with_context(|| format!("reading {}", svg.display()))?;
    let bytes = svg_to_png(&data).with_context(|| format!("rasterising {}", svg.display()))?;
    std::fs::write(png, bytes).with_context(|| format!("writing {}", png.display()))
}
