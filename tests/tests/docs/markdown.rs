//! Markdown read as GitHub and mdBook render it, as far as links go:
//! pages split into lines and code blocks, headings and their anchors,
//! inline link destinations, and the check of relative links.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use super::root;

/// One line of a page.
#[derive(Debug)]
pub(super) struct Line {
    /// 1-based.
    pub(super) number: usize,
    pub(super) text: String,
    /// Inside a fenced code block, or one of its fences.
    pub(super) code: bool,
    /// On an opening fence: its info string (`rust`, `sh`, "" untagged).
    pub(super) fence_info: Option<String>,
}

/// A markdown file, read and split into lines.
#[derive(Debug)]
pub(super) struct Page {
    pub(super) path: PathBuf,
    pub(super) lines: Vec<Line>,
}

impl Page {
    pub(super) fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let mut lines = Vec::new();
        // The fence character and length of the open code block.
        let mut open: Option<(char, usize)> = None;
        for (i, text) in text.lines().enumerate() {
            let t = text.trim_start();
            let fence = ['`', '~'].into_iter().find_map(|c| {
                let run = t.chars().take_while(|&x| x == c).count();
                (run >= 3).then_some((c, run))
            });
            let mut fence_info = None;
            let code = match (open, fence) {
                (Some((c, n)), Some((fc, run)))
                    if fc == c && run >= n && t[run..].trim().is_empty() =>
                {
                    open = None;
                    true
                }
                (Some(_), _) => true,
                (None, Some((c, run))) => {
                    open = Some((c, run));
                    fence_info = Some(t[run..].trim().to_owned());
                    true
                }
                (None, None) => false,
            };
            lines.push(Line {
                number: i + 1,
                text: text.to_owned(),
                code,
                fence_info,
            });
        }
        Self {
            path: path.to_path_buf(),
            lines,
        }
    }

    /// The path for messages: relative to the repository.
    pub(super) fn name(&self) -> String {
        relative(&self.path)
    }

    /// The anchors of the page's headings, as GitHub and mdBook make them
    /// (lower case; letters, digits, `-` and `_` kept; each space a `-`;
    /// the rest dropped; a repeated one gets `-1`, `-2`...), with the ids
    /// of `{#id}` heading attributes and of HTML `id`/`name` attributes.
    pub(super) fn anchors(&self) -> BTreeSet<String> {
        let mut anchors = BTreeSet::new();
        let mut previous: Option<&Line> = None;
        for line in &self.lines {
            if line.code {
                previous = None;
                continue;
            }
            for attr in ["id=\"", "name=\""] {
                for (at, _) in line.text.match_indices(attr) {
                    let rest = &line.text[at + attr.len()..];
                    if let Some(end) = rest.find('"') {
                        anchors.insert(rest[..end].to_owned());
                    }
                }
            }
            let heading = atx_heading(&line.text).or_else(|| {
                // Setext: a line of `=` or `-` under a line of text.
                let t = line.text.trim();
                let underline =
                    !t.is_empty() && (t.chars().all(|c| c == '=') || t.chars().all(|c| c == '-'));
                let above = previous.map(|p| p.text.trim()).unwrap_or("");
                (underline
                    && !above.is_empty()
                    && !above.starts_with(['|', '-', '*', '>', '#'])
                    && !above.starts_with(|c: char| c.is_ascii_digit()))
                .then(|| above.to_owned())
            });
            if let Some(heading) = heading {
                let id = heading_id(&heading);
                let mut unique = id.clone();
                let mut n = 0;
                while !anchors.insert(unique.clone()) {
                    n += 1;
                    unique = format!("{id}-{n}");
                }
            }
            previous = Some(line);
        }
        anchors
    }

    /// Every link target outside code: inline links and images
    /// (`[text](dest)`), reference definitions (`[label]: dest`) and HTML
    /// `href`/`src` attributes, with their line numbers.
    pub(super) fn links(&self) -> Vec<(usize, String)> {
        let mut links = Vec::new();
        for line in self.lines.iter().filter(|l| !l.code) {
            let text = without_code_spans(&line.text);
            for (at, _) in text.match_indices("](") {
                links.push((line.number, destination(&text[at + 2..])));
            }
            let t = text.trim_start();
            if t.starts_with('[')
                && let Some(end) = t.find("]:")
                && !t[1..end].contains(']')
            {
                let dest = t[end + 2..].split_whitespace().next().unwrap_or("");
                let dest = dest.trim_start_matches('<').trim_end_matches('>');
                links.push((line.number, dest.to_owned()));
            }
            for attr in ["href=\"", "src=\""] {
                for (at, _) in text.match_indices(attr) {
                    let rest = &text[at + attr.len()..];
                    if let Some(end) = rest.find('"') {
                        links.push((line.number, rest[..end].to_owned()));
                    }
                }
            }
        }
        links
    }
}

/// A path relative to the repository, for messages.
pub(super) fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// The text of an ATX heading (`## Text ##`), without its closing hashes.
pub(super) fn atx_heading(line: &str) -> Option<String> {
    let t = line
        .strip_prefix("   ")
        .or_else(|| line.strip_prefix("  "))
        .or_else(|| line.strip_prefix(' '))
        .unwrap_or(line);
    let hashes = t.chars().take_while(|&c| c == '#').count();
    if !(1..=6).contains(&hashes) {
        return None;
    }
    let rest = &t[hashes..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let rest = rest.trim();
    let rest = rest.trim_end_matches('#');
    Some(rest.trim_end().to_owned())
}

/// The anchor of a heading: its `{#id}` if it has one, else its text as
/// rendered (links, code marks, emphasis and HTML tags gone), lower case,
/// each space a `-`, punctuation other than `-` and `_` dropped.
pub(super) fn heading_id(heading: &str) -> String {
    let mut heading = heading.trim().to_owned();
    if heading.ends_with('}')
        && let Some(open) = heading.rfind('{')
    {
        let attrs = heading[open + 1..heading.len() - 1].to_owned();
        if let Some(id) = attrs.split_whitespace().find_map(|a| a.strip_prefix('#')) {
            return id.to_owned();
        }
        heading.truncate(open);
    }
    // [text](url) and ![alt](url) -> text, alt.
    let mut text = String::new();
    let mut rest = heading.as_str();
    while let Some(open) = rest.find('[') {
        let Some(close) = rest[open..].find("](").map(|c| open + c) else {
            break;
        };
        let Some(end) = rest[close..].find(')').map(|e| close + e) else {
            break;
        };
        text.push_str(rest[..open].trim_end_matches('!'));
        text.push_str(&rest[open + 1..close]);
        rest = &rest[end + 1..];
    }
    text.push_str(rest);
    // HTML tags, then entities.
    let mut plain = String::new();
    let mut in_tag = false;
    for c in text.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            c if !in_tag => plain.push(c),
            _ => {}
        }
    }
    let plain = plain
        .replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"");
    plain
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| {
            if c.is_alphanumeric() || c == '_' || c == '-' {
                Some(c)
            } else if c.is_whitespace() {
                Some('-')
            } else {
                None
            }
        })
        .collect()
}

/// `line` with its code spans (`` `a](b` ``) blanked out.
pub(super) fn without_code_spans(line: &str) -> String {
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i] != '`' {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let run = chars[i..].iter().take_while(|&&c| c == '`').count();
        // The closing run of exactly as many backticks.
        let mut j = i + run;
        let mut close = None;
        while j < chars.len() {
            if chars[j] == '`' {
                let n = chars[j..].iter().take_while(|&&c| c == '`').count();
                if n == run {
                    close = Some(j + n);
                    break;
                }
                j += n;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                out.extend(std::iter::repeat_n(' ', end - i));
                i = end;
            }
            None => {
                out.extend(&chars[i..i + run]);
                i += run;
            }
        }
    }
    out
}

/// The destination of an inline link, from just after its `(`.
pub(super) fn destination(after: &str) -> String {
    let after = after.trim_start();
    if let Some(rest) = after.strip_prefix('<') {
        return rest.split('>').next().unwrap_or("").to_owned();
    }
    let mut depth = 0;
    let mut dest = String::new();
    for c in after.chars() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => break,
            ')' => depth -= 1,
            c if c.is_whitespace() => break,
            _ => {}
        }
        dest.push(c);
    }
    dest
}

/// `%20` and the like decoded.
pub(super) fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let hex = |b: u8| char::from(b).to_digit(16);
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(&[hi, lo]) = bytes.get(i + 1..i + 3)
            && let (Some(hi), Some(lo)) = (hex(hi), hex(lo))
        {
            out.push(u8::try_from(hi * 16 + lo).expect("two hex digits make a byte"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `path` with its `.` and `..` resolved lexically; `None` if it climbs
/// out of the filesystem's root.
pub(super) fn normalized(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                if !out.pop() {
                    return None;
                }
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    Some(out)
}

/// Whether a link leaves the repository's files (a URL with a scheme).
pub(super) fn is_external(dest: &str) -> bool {
    let scheme = dest.split(':').next().unwrap_or("");
    dest.contains(':')
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        && !dest.starts_with('/')
        && !dest.starts_with('#')
}

/// Every broken relative link and anchor of `pages`, as `file:line: ...`.
pub(super) fn broken_links(pages: &[Page]) -> Vec<String> {
    let root = root();
    let mut anchors: BTreeMap<PathBuf, BTreeSet<String>> = BTreeMap::new();
    let mut anchors_of = |path: &Path| -> BTreeSet<String> {
        anchors
            .entry(path.to_path_buf())
            .or_insert_with(|| Page::read(path).anchors())
            .clone()
    };
    let mut broken = Vec::new();
    for page in pages {
        let summary = page.path.ends_with("docs/SUMMARY.md");
        for (line, dest) in page.links() {
            let at = format!("{}:{line}: `{dest}`", page.name());
            if dest.is_empty() {
                // mdBook's draft chapters: `- [Title]()`.
                if !summary {
                    broken.push(format!("{at}: an empty link"));
                }
                continue;
            }
            if is_external(&dest) {
                continue;
            }
            let (path, anchor) = match dest.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (dest.as_str(), None),
            };
            let path = percent_decoded(path);
            let target = if path.is_empty() {
                page.path.clone()
            } else if let Some(from_root) = path.strip_prefix('/') {
                root.join(from_root)
            } else {
                page.path
                    .parent()
                    .expect("a page has a directory")
                    .join(&path)
            };
            let Some(target) = normalized(&target).filter(|t| t.starts_with(&root)) else {
                broken.push(format!("{at}: leaves the repository"));
                continue;
            };
            if !target.exists() {
                broken.push(format!("{at}: {} does not exist", relative(&target)));
                continue;
            }
            let Some(anchor) = anchor.map(percent_decoded) else {
                continue;
            };
            if target.extension().is_some_and(|e| e == "md") {
                if !anchors_of(&target).contains(&anchor) {
                    broken.push(format!(
                        "{at}: {} has no heading with the anchor #{anchor}",
                        relative(&target)
                    ));
                }
            } else if target.is_dir() {
                broken.push(format!("{at}: an anchor on a directory"));
            }
        }
    }
    broken
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checker itself: anchors as GitHub and mdBook make them, links in
    /// code left alone, destinations with titles and parentheses.
    #[test]
    fn the_link_checker_reads_markdown_as_renderers_do() {
        assert_eq!(
            heading_id("The `serve` command: flags & files"),
            "the-serve-command-flags--files"
        );
        assert_eq!(
            heading_id("[Backup](backup.md) and restore"),
            "backup-and-restore"
        );
        assert_eq!(heading_id("Custom {#my-id}"), "my-id");
        assert_eq!(heading_id("tillstream check-disk"), "tillstream-check-disk");
        assert_eq!(heading_id("v0.1 → v0.2 (upgrades)"), "v01--v02-upgrades");
        assert_eq!(atx_heading("## Title ##").as_deref(), Some("Title"));
        assert_eq!(atx_heading("#hashtag"), None);
        assert_eq!(destination("a.md \"title\") and"), "a.md");
        assert_eq!(destination("<a b.md>)"), "a b.md");
        assert_eq!(destination("f(x).md#y) z"), "f(x).md#y");
        assert_eq!(
            without_code_spans("a `[x](y)` b"),
            format!("a {} b", " ".repeat(8))
        );
        assert!(is_external("https://example.com/x"));
        assert!(is_external("mailto:a@b"));
        assert!(!is_external("docs/a.md#b:c"));
        assert_eq!(percent_decoded("a%20b.md"), "a b.md");
    }

    /// Broken links are found and named: a missing file, a missing anchor of
    /// another page and of the page itself; good ones pass, external ones are
    /// not fetched, links in code are not links.
    #[test]
    fn the_link_checker_finds_broken_links() {
        // Inside the repository (target/tmp), as the pages checked are.
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary directory");
        let a = dir.path().join("a.md");
        let b = dir.path().join("sub/b.md");
        std::fs::create_dir(dir.path().join("sub")).expect("creating sub/");
        std::fs::write(
            &a,
            "# Page A\n\n## Set up (fresh machine)\n\n\
             [ok](sub/b.md#b-title) [ok](#set-up-fresh-machine) [ok](sub/) [ok](https://example.invalid/x)\n\
             [gone](missing.md) [no anchor](sub/b.md#nope) [no anchor here](#page-b)\n\
             `[in code](nowhere.md)`\n\n```sh\n[in a block](nowhere.md)\n```\n\n[ref]: sub/c.md\n",
        )
        .expect("writing a.md");
        std::fs::write(&b, "B title\n=======\n\n[up](../a.md#page-a)\n").expect("writing b.md");
        let pages = [Page::read(&a), Page::read(&b)];
        let broken: Vec<String> = broken_links(&pages)
            .into_iter()
            .map(|l| {
                l.rsplit_once(".md:")
                    .map(|(_, l)| l.to_owned())
                    .unwrap_or(l)
            })
            .collect();
        assert_eq!(
            broken.len(),
            4,
            "expected 4 broken links, found:\n{}",
            broken.join("\n")
        );
        assert!(
            broken[0].starts_with("6: `missing.md`: ")
                && broken[0].ends_with("missing.md does not exist")
        );
        assert!(
            broken[1].starts_with("6: `sub/b.md#nope`: ")
                && broken[1].ends_with("has no heading with the anchor #nope")
        );
        assert!(
            broken[2].starts_with("6: `#page-b`: ")
                && broken[2].ends_with("has no heading with the anchor #page-b")
        );
        assert!(broken[3].starts_with("13: `sub/c.md`: "), "{}", broken[3]);
    }
}
