//! Operator output: aligned tables and colour for people (colour only on a terminal, and never
//! with `NO_COLOR`), JSON for scripts.

use std::io::IsTerminal;

use serde::Serialize;

/// Whether to colour standard output.
pub fn colour() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Wraps `text` in an ANSI colour when colouring: `green`, `red`, `yellow`, `blue`, `dim`,
/// `bold`.
pub fn paint(text: &str, style: &str) -> String {
    if !colour() {
        return text.to_owned();
    }
    let code = match style {
        "green" => "32",
        "red" => "31",
        "yellow" => "33",
        "blue" => "34",
        "dim" => "2",
        "bold" => "1",
        _ => return text.to_owned(),
    };
    format!("\x1b[{code}m{text}\x1b[0m")
}

/// The colour a saga or step state is shown in.
pub fn state_style(state: &str) -> &'static str {
    match state {
        "completed" | "succeeded" | "compensated" => "green",
        "failed" | "timed_out" => "red",
        "running" | "compensating" => "yellow",
        _ => "dim",
    }
}

/// At most `width` characters of `text` on one line: runs of white space (line breaks too)
/// become one space, and a cut ends in `…`.
pub fn shorten(text: &str, width: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= width {
        return line;
    }
    let cut: String = line.chars().take(width.saturating_sub(1)).collect();
    format!("{}…", cut.trim_end())
}

/// Prints a value as pretty JSON.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A table with a header row; columns are padded to their widest cell (colour codes aside).
#[derive(Debug, Default)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<(String, Option<&'static str>)>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; each cell may name a style for [`paint`].
    pub fn row(&mut self, cells: Vec<(String, Option<&'static str>)>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn print(&self) {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        let line = |cells: Vec<(String, Option<&'static str>)>| {
            let last = cells.len().saturating_sub(1);
            let text: Vec<String> = cells
                .into_iter()
                .enumerate()
                .map(|(i, (cell, style))| {
                    let pad = if i == last {
                        String::new()
                    } else {
                        " ".repeat(widths[i].saturating_sub(cell.chars().count()))
                    };
                    let shown = style.map_or_else(|| cell.clone(), |s| paint(&cell, s));
                    format!("{shown}{pad}")
                })
                .collect();
            println!("{}", text.join("  ").trim_end());
        };
        line(
            self.header
                .iter()
                .map(|h| (h.to_uppercase(), Some("bold")))
                .collect(),
        );
        for row in &self.rows {
            line(row.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::shorten;

    #[test]
    fn text_is_shortened_to_one_line() {
        assert_eq!(shorten("short", 10), "short");
        assert_eq!(shorten("a rather long error message", 10), "a rather…");
        assert_eq!(shorten("two\nlines", 10), "two lines");
        assert_eq!(shorten("a long first line\nand more", 10), "a long fi…");
        // A line break at either end is no reason to show less, or to hint at more.
        assert_eq!(shorten("\nboom", 10), "boom");
        assert_eq!(shorten("boom\n", 10), "boom");
        assert_eq!(shorten("", 10), "");
    }
}
