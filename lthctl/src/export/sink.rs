//! Where an export's records go: CSV, JSON lines or Parquet, all streaming (a masks export of a
//! large sweep is hundreds of MB; nothing holds more than one Parquet row group).
//!
//! Parquet is written with the `parquet` crate's column writers directly, without Arrow: the
//! tables are flat and typed, and the Arrow half of arrow-rs would more than double lthctl's build.

use super::table::{ColumnType, Record, Schema, Value};
use anyhow::{Context, Result};
use parquet::basic::Compression;
use parquet::data_type::{BoolType, ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::io::Write;
use std::sync::Arc;

/// Output formats of `lthctl export`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Comma-separated values with a header row; bytes as lowercase hex.
    Csv,
    /// Apache Parquet (Snappy-compressed), for pandas, polars, DuckDB, Spark.
    Parquet,
    /// One JSON object per line; bytes as lowercase hex, NaN and infinities as null.
    Jsonl,
}

impl ExportFormat {
    /// The format a file name implies (`runs.parquet`), if any.
    pub fn from_path(path: &std::path::Path) -> Option<ExportFormat> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(ExportFormat::Csv),
            "parquet" | "pq" => Some(ExportFormat::Parquet),
            "jsonl" | "ndjson" => Some(ExportFormat::Jsonl),
            _ => None,
        }
    }

    /// Binary formats must not be written to a terminal.
    pub fn is_binary(self) -> bool {
        self == ExportFormat::Parquet
    }
}

pub trait Sink {
    fn write(&mut self, record: Record) -> Result<()>;
    /// Writes what is buffered and the file's footer; returns the number of records.
    fn finish(self: Box<Self>) -> Result<u64>;
}

/// A sink writing to `w`; every format streams.
pub fn open_send<'w>(format: ExportFormat, schema: Schema, w: &'w mut (dyn Write + Send)) -> Result<Box<dyn Sink + 'w>> {
    Ok(match format {
        ExportFormat::Csv => Box::new(CsvSink::new(schema, w)?),
        ExportFormat::Jsonl => Box::new(JsonlSink { schema, w, rows: 0 }),
        ExportFormat::Parquet => Box::new(ParquetSink::new(schema, w, Box::new(|w| Ok(w.flush()?)))?),
    })
}

/// A sink writing to a writer that is not `Send` (stdout as lthctl's commands get it): the
/// Parquet writer needs `Send`, so a Parquet file is built in memory (its compressed size) and
/// copied out at the end; the text formats stream.
pub fn open_plain<'w>(format: ExportFormat, schema: Schema, w: &'w mut dyn Write) -> Result<Box<dyn Sink + 'w>> {
    Ok(match format {
        ExportFormat::Csv => Box::new(CsvSink::new(schema, w)?),
        ExportFormat::Jsonl => Box::new(JsonlSink { schema, w, rows: 0 }),
        ExportFormat::Parquet => Box::new(ParquetSink::new(schema, Vec::new(), Box::new(move |buf: Vec<u8>| Ok(w.write_all(&buf)?)))?),
    })
}

fn text(v: &Value) -> String {
    match v {
        Value::I64(x) => x.to_string(),
        // Display prints the shortest text that reads back as the same f64.
        Value::F64(x) => x.to_string(),
        Value::Bool(x) => x.to_string(),
        Value::Str(s) => s.clone(),
        Value::Bytes(b) => hex::encode(b),
    }
}

struct CsvSink<W: Write> {
    schema: Schema,
    w: csv::Writer<W>,
    rows: u64,
}

impl<W: Write> CsvSink<W> {
    fn new(schema: Schema, w: W) -> Result<Self> {
        let mut w = csv::Writer::from_writer(w);
        w.write_record(schema.columns.iter().map(|(name, _)| *name))?;
        Ok(CsvSink { schema, w, rows: 0 })
    }
}

impl<W: Write> Sink for CsvSink<W> {
    fn write(&mut self, record: Record) -> Result<()> {
        self.schema.check(&record)?;
        self.w.write_record(record.iter().map(text))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.w.flush()?;
        Ok(self.rows)
    }
}

struct JsonlSink<W: Write> {
    schema: Schema,
    w: W,
    rows: u64,
}

impl<W: Write> Sink for JsonlSink<W> {
    fn write(&mut self, record: Record) -> Result<()> {
        self.schema.check(&record)?;
        // Written by hand to keep the schema's column order (serde_json's map sorts its keys).
        let mut line = String::from("{");
        for (i, ((name, _), v)) in self.schema.columns.iter().zip(&record).enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&serde_json::to_string(name)?);
            line.push(':');
            let json = match v {
                Value::I64(x) => serde_json::Value::from(*x),
                Value::F64(x) if x.is_finite() => serde_json::Value::from(*x),
                Value::F64(_) => serde_json::Value::Null,
                Value::Bool(x) => serde_json::Value::from(*x),
                Value::Str(s) => serde_json::Value::from(s.as_str()),
                Value::Bytes(b) => serde_json::Value::from(hex::encode(b)),
            };
            line.push_str(&serde_json::to_string(&json)?);
        }
        line.push_str("}\n");
        self.w.write_all(line.as_bytes())?;
        self.rows += 1;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.w.flush()?;
        Ok(self.rows)
    }
}

/// A row group closes at this many rows or this many buffered bytes, whichever comes first.
const ROW_GROUP_ROWS: usize = 128 * 1024;
const ROW_GROUP_BYTES: usize = 64 << 20;

/// What to do with the underlying writer once the file is complete.
type OnFinish<'w, W> = Box<dyn FnOnce(W) -> Result<()> + 'w>;

struct ParquetSink<'w, W: Write + Send> {
    schema: Schema,
    writer: SerializedFileWriter<W>,
    buffered: Vec<Record>,
    buffered_bytes: usize,
    rows: u64,
    on_finish: OnFinish<'w, W>,
}

/// The Parquet schema of a table, in Parquet's message-type notation.
pub fn parquet_message_type(schema: &Schema) -> String {
    let mut s = format!("message {} {{\n", schema.name);
    for (name, ty) in &schema.columns {
        let t = match ty {
            ColumnType::I64 => "int64",
            ColumnType::F64 => "double",
            ColumnType::Bool => "boolean",
            ColumnType::Str => "binary",
            ColumnType::Bytes => "binary",
        };
        let annotation = if *ty == ColumnType::Str { " (STRING)" } else { "" };
        s.push_str(&format!("  required {t} {name}{annotation};\n"));
    }
    s.push('}');
    s
}

impl<'w, W: Write + Send> ParquetSink<'w, W> {
    fn new(schema: Schema, w: W, on_finish: OnFinish<'w, W>) -> Result<Self> {
        let message = parquet_message_type(&schema);
        let parsed = parquet::schema::parser::parse_message_type(&message).context("internal error: the export's Parquet schema")?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_created_by(format!("lthctl {}", env!("CARGO_PKG_VERSION")))
            .build();
        let writer = SerializedFileWriter::new(w, Arc::new(parsed), Arc::new(props))?;
        Ok(ParquetSink { schema, writer, buffered: Vec::new(), buffered_bytes: 0, rows: 0, on_finish })
    }

    fn flush_row_group(&mut self) -> Result<()> {
        if self.buffered.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.buffered);
        self.buffered_bytes = 0;
        let mut group = self.writer.next_row_group()?;
        let mut index = 0;
        while let Some(mut column) = group.next_column()? {
            let values = rows.iter().map(|r| &r[index]);
            match self.schema.columns[index].1 {
                ColumnType::I64 => {
                    let v: Vec<i64> = values.map(|v| if let Value::I64(x) = v { *x } else { unreachable!("checked") }).collect();
                    column.typed::<Int64Type>().write_batch(&v, None, None)?;
                }
                ColumnType::F64 => {
                    let v: Vec<f64> = values.map(|v| if let Value::F64(x) = v { *x } else { unreachable!("checked") }).collect();
                    column.typed::<DoubleType>().write_batch(&v, None, None)?;
                }
                ColumnType::Bool => {
                    let v: Vec<bool> = values.map(|v| if let Value::Bool(x) = v { *x } else { unreachable!("checked") }).collect();
                    column.typed::<BoolType>().write_batch(&v, None, None)?;
                }
                ColumnType::Str | ColumnType::Bytes => {
                    let v: Vec<ByteArray> = values
                        .map(|v| match v {
                            Value::Str(s) => ByteArray::from(s.as_bytes().to_vec()),
                            Value::Bytes(b) => ByteArray::from(b.clone()),
                            _ => unreachable!("checked"),
                        })
                        .collect();
                    column.typed::<ByteArrayType>().write_batch(&v, None, None)?;
                }
            }
            column.close()?;
            index += 1;
        }
        group.close()?;
        Ok(())
    }
}

impl<W: Write + Send> Sink for ParquetSink<'_, W> {
    fn write(&mut self, record: Record) -> Result<()> {
        self.schema.check(&record)?;
        self.buffered_bytes += record.iter().map(Value::weight).sum::<usize>();
        self.buffered.push(record);
        self.rows += 1;
        if self.buffered.len() >= ROW_GROUP_ROWS || self.buffered_bytes >= ROW_GROUP_BYTES {
            self.flush_row_group()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> Result<u64> {
        self.flush_row_group()?;
        let rows = self.rows;
        let inner = self.writer.into_inner()?;
        (self.on_finish)(inner)?;
        Ok(rows)
    }
}
