//! Rules about the shape of the code that keep it easy to change, checked on the source:
//! role folders never touch the Kafka client library, no function outgrows a screen, and
//! the docs describe the roles the code declares.

use std::path::{Path, PathBuf};

const ROLE_FOLDERS: &[&str] = &[
    "ingest", "devices", "trainer", "scorer", "alerts", "http", "jobs",
];
const LONGEST_FUNCTION: usize = 80;
/// Declarative lists, exempt from the length rule.
const EXEMPT: &[(&str, &str)] = &[("metrics.rs", "new")];

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

/// The source with comments, string and char literals blanked (newlines kept), so
/// braces and words in them do not count.
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < chars.len() {
        let rest = &chars[i..];
        let end = if rest.starts_with(&['/', '/']) {
            rest.iter().position(|&c| c == '\n').unwrap_or(rest.len())
        } else if rest[0] == '"' || (rest[0] == 'r' && raw_string_hashes(rest).is_some()) {
            string_length(rest)
        } else if rest[0] == '\'' && rest.len() > 2 && (rest[2] == '\'' || rest[1] == '\\') {
            rest.iter()
                .skip(1)
                .position(|&c| c == '\'')
                .map_or(1, |p| p + 2)
        } else {
            out.push(rest[0]);
            i += 1;
            continue;
        };
        out.extend(
            rest[..end]
                .iter()
                .map(|&c| if c == '\n' { '\n' } else { ' ' }),
        );
        i += end;
    }
    out
}

fn raw_string_hashes(text: &[char]) -> Option<usize> {
    let hashes = text[1..].iter().take_while(|&&c| c == '#').count();
    (text.get(1 + hashes) == Some(&'"')).then_some(hashes)
}

fn string_length(text: &[char]) -> usize {
    if let Some(hashes) = raw_string_hashes(text).filter(|_| text[0] == 'r') {
        let close: Vec<char> = std::iter::once('"')
            .chain(std::iter::repeat_n('#', hashes))
            .collect();
        let body = 2 + hashes;
        return text[body..]
            .windows(close.len())
            .position(|w| w == close.as_slice())
            .map_or(text.len(), |p| body + p + close.len());
    }
    let mut j = 1;
    while j < text.len() && text[j] != '"' {
        j += if text[j] == '\\' { 2 } else { 1 };
    }
    (j + 1).min(text.len())
}

/// (name, first line, lines) of every function with a body.
fn functions(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut search = 0;
    while let Some(at) = code[search..].find("fn ").map(|p| p + search) {
        search = at + 3;
        let starts_word =
            at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_');
        let name: String = code[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !starts_word || name.is_empty() {
            continue;
        }
        let Some(open) = code[at..].find(['{', ';']).map(|p| p + at) else {
            continue;
        };
        if bytes[open] == b';' {
            continue;
        }
        let mut depth = 0;
        let close = (open..bytes.len())
            .find(|&k| {
                match bytes[k] {
                    b'{' => depth += 1,
                    b'}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .unwrap_or(bytes.len() - 1);
        let first = code[..at].matches('\n').count() + 1;
        let last = code[..close].matches('\n').count() + 1;
        found.push((name, first, last - first + 1));
    }
    found
}

#[test]
fn no_function_in_the_service_is_longer_than_a_screen() {
    let mut long = Vec::new();
    for file in rust_files(&source_dir()) {
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let file_name = file.file_name().unwrap().to_string_lossy().into_owned();
        for (name, line, length) in functions(&code) {
            let exempt = EXEMPT.contains(&(file_name.as_str(), name.as_str()));
            if length > LONGEST_FUNCTION && !exempt {
                long.push(format!("{}:{line} {name} ({length} lines)", file.display()));
            }
        }
    }
    assert!(
        long.is_empty(),
        "functions longer than {LONGEST_FUNCTION} lines: {long:#?}"
    );
}

#[test]
fn the_length_rule_sees_long_functions() {
    let body = "    let x = 1;\n".repeat(90);
    let code = code_only(&format!(
        "fn long() {{\n{body}}}\nfn short() {{ \"}}\" }}\n"
    ));
    let lengths: Vec<(String, usize)> = functions(&code)
        .into_iter()
        .map(|(name, _, length)| (name, length))
        .collect();
    assert_eq!(
        lengths,
        vec![("long".to_owned(), 92), ("short".to_owned(), 1)]
    );
}

#[test]
fn role_folders_do_not_use_the_kafka_client_library() {
    let mut offending = Vec::new();
    for folder in ROLE_FOLDERS {
        for file in rust_files(&source_dir().join(folder)) {
            let code = code_only(&std::fs::read_to_string(&file).unwrap());
            if code.contains("rdkafka") {
                offending.push(file.display().to_string());
            }
        }
    }
    assert!(
        offending.is_empty(),
        "role files using rdkafka: {offending:?}"
    );
}

#[test]
fn the_kafka_plumbing_does_not_reexport_client_types() {
    let code = code_only(&std::fs::read_to_string(source_dir().join("kafka/mod.rs")).unwrap());
    let reexports: Vec<&str> = code
        .lines()
        .filter(|line| line.trim_start().starts_with("pub use") && line.contains("rdkafka"))
        .collect();
    assert!(reexports.is_empty(), "{reexports:?}");
}

#[test]
fn the_architecture_doc_lists_the_roles_the_code_declares() {
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/architecture.md");
    let text = std::fs::read_to_string(docs).unwrap();
    let table = fleetwatch::app::markdown_table(&Default::default());
    assert!(
        text.contains(&table),
        "docs/architecture.md must contain the roles table as `fleetwatch roles` prints it:\n{table}"
    );
}
