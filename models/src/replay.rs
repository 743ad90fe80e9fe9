//! Running a trainer and a lagging scorer over a series, exactly as production pairs
//! them: the scorer scores each event with the parameters most recently published, and
//! the trainer publishes every `publish_every` events. The event is scored before the
//! trainer learns it: a scorer never sees parameters that already know the event.

use crate::episode::{Episode, EpisodeRules, Transition};
use crate::{MetricValues, Observation, Score, Scorer, Trainer};

/// Score every observation in order; returns one score per observation.
/// The metrics may be owned or borrowed (`&BTreeMap`), so that several configurations can
/// replay the same series without copying it.
pub fn replay<T, S, M>(
    trainer: T,
    scorer: S,
    publish_every: u32,
    observations: impl IntoIterator<Item = (i64, M)>,
) -> Vec<Score>
where
    T: Trainer,
    S: Scorer<Params = T::Params>,
    M: std::borrow::Borrow<MetricValues>,
{
    let mut replayer = Replayer::new(trainer, scorer, publish_every);
    observations
        .into_iter()
        .map(|(ts_ms, metrics)| replayer.step(ts_ms, metrics.borrow()))
        .collect()
}

/// [`replay`] one observation at a time, for callers that score a series as it arrives
/// (the backfill) instead of holding it: the same pairing, the same scores.
pub struct Replayer<T: Trainer, S> {
    trainer: T,
    scorer: S,
    params: T::Params,
    publish_every: u32,
    since_publish: u32,
}

impl<T, S> Replayer<T, S>
where
    T: Trainer,
    S: Scorer<Params = T::Params>,
{
    /// A replay whose trainer publishes its parameters every `publish_every` events.
    pub fn new(trainer: T, scorer: S, publish_every: u32) -> Self {
        Self {
            params: trainer.snapshot(),
            trainer,
            scorer,
            publish_every: publish_every.max(1),
            since_publish: 0,
        }
    }

    /// Score the next observation with the parameters last published, then learn it.
    pub fn step(&mut self, ts_ms: i64, metrics: &MetricValues) -> Score {
        let observation = Observation { ts_ms, metrics };
        let score = self.scorer.score(&self.params, &observation);
        self.trainer.update(&observation);
        self.since_publish += 1;
        if self.since_publish >= self.publish_every {
            self.params = self.trainer.snapshot();
            self.since_publish = 0;
        }
        score
    }
}

/// What went wrong reading a telemetry table: always names the row (1-based, the header
/// is row 1) and the column.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("the input is empty: no header row")]
    Empty,
    #[error("the input has a header but no data rows")]
    NoRows,
    #[error("column {0:?} is not in the header (columns: {1})")]
    MissingColumn(String, String),
    #[error("row {row}, column {column:?}: {problem}")]
    Cell {
        row: usize,
        column: String,
        problem: String,
    },
    #[error("row {row}: {problem}")]
    Row { row: usize, problem: String },
    #[error("writing the output: {0}")]
    Write(String),
}

/// How to read a table.
#[derive(Clone, Debug)]
pub struct TableOptions {
    pub timestamp_column: String,
    /// Metric columns; empty means every column but the timestamp.
    pub metrics: Vec<String>,
    pub separator: u8,
    pub publish_every: u32,
    /// Score at or above which `is_anomaly` is true.
    pub threshold: f64,
}

/// Counts of a replay, for the CLI to report.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TableSummary {
    pub rows: usize,
    /// Rows marked anomalous (inside an episode).
    pub anomalies: usize,
    /// Episodes opened.
    pub episodes: usize,
}

/// Which rows belong to an episode, as the production episode machine (the scorer role's)
/// sees the scores: from the row that opens it to its last row that is not calm. The
/// calm rows that close an episode are not part of the fault.
pub fn episode_rows(scores: &[Score], rules: &EpisodeRules) -> (Vec<bool>, usize) {
    let mut marks = vec![false; scores.len()];
    let mut episode = Episode::default();
    let mut episodes = 0;
    let mut last_active = 0;
    for (i, score) in scores.iter().enumerate() {
        let transition = episode.observe(rules, score, i as u64);
        if transition == Some(Transition::Opened) {
            episodes += 1;
        }
        if episode.is_open() {
            marks[i] = true;
            let value = if score.ready { score.value } else { 0.0 };
            if value >= rules.clear_below {
                last_active = i;
            }
        } else if transition == Some(Transition::Closed) {
            marks[last_active + 1..i].fill(false);
        }
    }
    if episode.is_open() {
        marks[last_active + 1..].fill(false);
    }
    (marks, episodes)
}

/// One episode as the production episode machine decides it over a replayed series:
/// the indices (into the scores) of the event that opened it and of the event that
/// closed it (`None`: still open at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpisodeSpan {
    pub opened: usize,
    pub closed: Option<usize>,
}

/// The episodes of a replayed series, in order, as the scorer role's episode machine
/// decides them (a score that is not ready counts as 0, as in [`episode_rows`]): what the
/// backfill reports as alerts, and what [`episode_rows`] marks.
pub fn episodes(scores: &[Score], rules: &EpisodeRules) -> Vec<EpisodeSpan> {
    let mut episode = Episode::default();
    let mut spans: Vec<EpisodeSpan> = Vec::new();
    for (i, score) in scores.iter().enumerate() {
        match episode.observe(rules, score, i as u64) {
            Some(Transition::Opened) => spans.push(EpisodeSpan {
                opened: i,
                closed: None,
            }),
            Some(Transition::Closed) => {
                if let Some(last) = spans.last_mut() {
                    last.closed = Some(i);
                }
            }
            _ => {}
        }
    }
    spans
}

/// Timestamps as epoch seconds or milliseconds (by magnitude), or
/// `YYYY-MM-DD[ T]HH:MM:SS[.fff][Z]`.
pub fn parse_any_timestamp(text: &str) -> Option<i64> {
    let text = text.trim();
    if let Ok(number) = text.parse::<f64>() {
        if !number.is_finite() {
            return None;
        }
        // Below 1e11 it can only be seconds (1e11 ms is 1973).
        return Some(if number.abs() < 1e11 {
            (number * 1000.0) as i64
        } else {
            number as i64
        });
    }
    crate::nab::parse_timestamp_ms(text.trim_end_matches('Z'))
}

/// Score every row of a delimited telemetry table with the production model (one row at
/// a time, parameters published every `publish_every` rows) and write it back with three
/// more columns: `anomaly_score` (the raw score of the row), `is_anomaly` (the row is
/// part of an episode of the production episode machine at `threshold`: a fault is
/// marked for its whole length) and `top_metric`. Empty metric cells are missing
/// readings; anything else that is not a finite number is an error.
#[cfg(feature = "table")]
pub fn replay_table<R: std::io::Read, W: std::io::Write>(
    input: R,
    output: W,
    options: &TableOptions,
) -> Result<TableSummary, TableError> {
    let table = read_table(input, options)?;
    let config = crate::production::Config::default();
    let scores = replay(
        crate::production::trainer(&config),
        crate::production::scorer(),
        options.publish_every,
        table.observations,
    );
    let rules = EpisodeRules::recommended(options.threshold)
        .check()
        .map_err(|e| TableError::Write(e.to_string()))?;
    let (marks, episodes) = episode_rows(&scores, &rules);
    write_table(
        output,
        options.separator,
        &table.header,
        &table.records,
        &scores,
        &marks,
    )?;
    Ok(TableSummary {
        rows: table.records.len(),
        anomalies: marks.iter().filter(|&&m| m).count(),
        episodes,
    })
}

/// A table as read: its header, raw records and one observation per record.
#[cfg(feature = "table")]
struct Table {
    header: Vec<String>,
    records: Vec<csv::StringRecord>,
    observations: Vec<(i64, MetricValues)>,
}

/// The header's names, the timestamp column and the metric columns (name, index).
#[cfg(feature = "table")]
type Header = (Vec<String>, usize, Vec<(String, usize)>);

#[cfg(feature = "table")]
fn read_header<R: std::io::Read>(
    reader: &mut csv::Reader<R>,
    options: &TableOptions,
) -> Result<Header, TableError> {
    let header: Vec<String> = reader
        .headers()
        .map_err(|e| TableError::Row {
            row: 1,
            problem: e.to_string(),
        })?
        .iter()
        .map(|name| name.trim().to_owned())
        .collect();
    if header.is_empty() || header.iter().all(String::is_empty) {
        return Err(TableError::Empty);
    }
    let find = |name: &str| {
        header
            .iter()
            .position(|column| column == name)
            .ok_or_else(|| TableError::MissingColumn(name.to_owned(), header.join(", ")))
    };
    let ts_index = find(&options.timestamp_column)?;
    let metric_names: Vec<String> = if options.metrics.is_empty() {
        header
            .iter()
            .filter(|c| **c != options.timestamp_column)
            .cloned()
            .collect()
    } else {
        options.metrics.clone()
    };
    let metrics = metric_names
        .into_iter()
        .map(|m| find(&m).map(|i| (m, i)))
        .collect::<Result<Vec<_>, _>>()?;
    if metrics.is_empty() {
        return Err(TableError::MissingColumn(
            "(a metric column)".into(),
            header.join(", "),
        ));
    }
    Ok((header, ts_index, metrics))
}

#[cfg(feature = "table")]
fn read_table<R: std::io::Read>(input: R, options: &TableOptions) -> Result<Table, TableError> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(options.separator)
        .flexible(true)
        .from_reader(input);
    let (header, ts_index, metric_columns) = read_header(&mut reader, options)?;
    let mut records = Vec::new();
    let mut observations = Vec::new();
    for (index, record) in reader.records().enumerate() {
        let row = index + 2;
        let record = record.map_err(|e| TableError::Row {
            row,
            problem: e.to_string(),
        })?;
        let cell = |i: usize| record.get(i).unwrap_or("").trim();
        let ts = parse_any_timestamp(cell(ts_index)).ok_or_else(|| TableError::Cell {
            row,
            column: options.timestamp_column.clone(),
            problem: format!(
                "{:?} is not a timestamp (epoch seconds or ms, or YYYY-MM-DD HH:MM:SS)",
                cell(ts_index)
            ),
        })?;
        let mut metrics = MetricValues::new();
        for (name, i) in &metric_columns {
            let text = cell(*i);
            if text.is_empty() {
                continue;
            }
            let value: f64 = text
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| TableError::Cell {
                    row,
                    column: name.clone(),
                    problem: format!("{text:?} is not a finite number"),
                })?;
            metrics.insert(name.as_str().into(), value);
        }
        observations.push((ts, metrics));
        records.push(record);
    }
    if records.is_empty() {
        return Err(TableError::NoRows);
    }
    Ok(Table {
        header,
        records,
        observations,
    })
}

#[cfg(feature = "table")]
fn write_table<W: std::io::Write>(
    output: W,
    separator: u8,
    header: &[String],
    records: &[csv::StringRecord],
    scores: &[Score],
    marks: &[bool],
) -> Result<(), TableError> {
    let mut writer = csv::WriterBuilder::new()
        .delimiter(separator)
        .from_writer(output);
    let write_error = |e: csv::Error| TableError::Write(e.to_string());
    let mut out_header = header.to_vec();
    out_header.extend(["anomaly_score", "is_anomaly", "top_metric"].map(String::from));
    writer.write_record(&out_header).map_err(write_error)?;
    for ((record, score), &is_anomaly) in records.iter().zip(scores).zip(marks) {
        let value = if score.ready { score.value } else { 0.0 };
        let top = score
            .contributors
            .first()
            .filter(|_| score.ready)
            .map_or("", |c| c.metric.as_str());
        let mut fields: Vec<String> = (0..header.len())
            .map(|i| record.get(i).unwrap_or("").to_owned())
            .collect();
        fields.extend([
            format!("{value:.6}"),
            is_anomaly.to_string(),
            top.to_owned(),
        ]);
        writer.write_record(&fields).map_err(write_error)?;
    }
    writer.flush().map_err(|e| TableError::Write(e.to_string()))
}

#[cfg(all(test, feature = "cli"))]
mod tests {
    use super::*;

    fn options() -> TableOptions {
        TableOptions {
            timestamp_column: "time".into(),
            metrics: vec![],
            separator: b';',
            publish_every: 10,
            threshold: 0.65,
        }
    }

    fn run(input: &str, options: &TableOptions) -> Result<(TableSummary, String), TableError> {
        let mut out = Vec::new();
        let summary = replay_table(input.as_bytes(), &mut out, options)?;
        Ok((summary, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn scores_every_row_and_names_the_top_metric() {
        let mut input = String::from("time;temp;power\n");
        for i in 0..600 {
            let temp = if i == 500 {
                90.0
            } else {
                20.0 + ((i * 7919) % 13) as f64 / 10.0
            };
            input.push_str(&format!(
                "{};{temp};{}\n",
                1_700_000_000 + i * 60,
                100 + (i * 31) % 7
            ));
        }
        let (summary, output) = run(&input, &options()).unwrap();
        assert_eq!(summary.rows, 600);
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(
            lines[0],
            "time;temp;power;anomaly_score;is_anomaly;top_metric"
        );
        assert_eq!(lines.len(), 601);
        assert!(lines[501].ends_with(";true;temp"), "{}", lines[501]);
        assert!(summary.anomalies >= 1);
    }

    #[test]
    fn bad_tables_name_the_row_and_column() {
        let error = run("", &options()).unwrap_err().to_string();
        assert!(error.contains("empty"), "{error}");
        let error = run("time;temp\n", &options()).unwrap_err().to_string();
        assert!(error.contains("no data rows"), "{error}");
        let error = run("when;temp\n1;2\n", &options()).unwrap_err().to_string();
        assert!(error.contains("\"time\" is not in the header"), "{error}");
        let error = run("time;temp\n1700000000;20\n1700000060;warm\n", &options())
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "row 3, column \"temp\": \"warm\" is not a finite number"
        );
        let error = run("time;temp\nyesterday;20\n", &options())
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("row 2, column \"time\""), "{error}");
        let metrics = TableOptions {
            metrics: vec!["humidity".into()],
            ..options()
        };
        let error = run("time;temp\n1;2\n", &metrics).unwrap_err().to_string();
        assert!(error.contains("\"humidity\""), "{error}");
    }

    #[test]
    fn episodes_open_and_close_where_the_rows_are_marked() {
        let rules = EpisodeRules::recommended(0.5);
        let score = |value: f64| Score {
            value,
            ready: true,
            ..Score::default()
        };
        let mut scores: Vec<Score> = (0..10).map(|_| score(0.0)).collect();
        scores.push(score(0.9));
        scores.extend((0..40).map(|_| score(0.0)));
        scores.push(score(0.9));
        let spans = episodes(&scores, &rules);
        assert_eq!(
            spans,
            [
                EpisodeSpan {
                    opened: 10,
                    closed: Some(40)
                },
                EpisodeSpan {
                    opened: 51,
                    closed: None
                }
            ]
        );
        let (marks, count) = episode_rows(&scores, &rules);
        assert_eq!(count, spans.len());
        assert!(marks[10] && !marks[11] && marks[51]);
    }

    #[test]
    fn empty_cells_are_missing_readings() {
        let (summary, _) = run(
            "time;temp;power\n1700000000;20;\n1700000060;;100\n",
            &options(),
        )
        .unwrap();
        assert_eq!(summary.rows, 2);
    }

    #[test]
    fn understands_common_timestamps() {
        assert_eq!(parse_any_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_any_timestamp("1700000000123"),
            Some(1_700_000_000_123)
        );
        assert_eq!(
            parse_any_timestamp("2023-11-14T22:13:20Z"),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            parse_any_timestamp("2023-11-14 22:13:20.5"),
            Some(1_700_000_000_500)
        );
        assert_eq!(parse_any_timestamp("soon"), None);
    }
}
