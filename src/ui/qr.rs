//! The pairing code as a QR code, an SVG image drawn by the `qrcode` crate.

/// An SVG image of a QR code of `text` (a pairing code: a few characters).
pub fn svg(text: &str) -> Result<String, String> {
    let code = qrcode::QrCode::new(text.as_bytes()).map_err(|e| e.to_string())?;
    Ok(code
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(180, 180)
        .quiet_zone(true)
        .build())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_code_gives_an_svg_with_modules() {
        let s = super::svg("482-913").unwrap();
        assert!(s.contains("<svg") && s.contains("</svg>"), "{s}");
        // The dark modules are one path with many segments.
        assert!(s.matches('M').count() > 20, "{s}");
        assert_ne!(s, super::svg("482-914").unwrap());
    }
}
