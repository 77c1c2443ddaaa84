//! A typed table, written as CSV, JSON lines or Parquet by the sinks in `export::sink`.
//!
//! Each export (`levels`, `layers`, `masks`) is a fixed list of typed columns and a stream of
//! records; the sinks only know these five types, so the three formats always agree on the columns
//! and their order.

/// The type of a column. Every column is required (no nulls): what has no value is not exported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    I64,
    F64,
    Bool,
    Str,
    /// Raw bytes: a Parquet `binary`; lowercase hex in CSV and JSON lines.
    Bytes,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    I64(i64),
    F64(f64),
    Bool(bool),
    Str(String),
    Bytes(Vec<u8>),
}

impl Value {
    pub fn column_type(&self) -> ColumnType {
        match self {
            Value::I64(_) => ColumnType::I64,
            Value::F64(_) => ColumnType::F64,
            Value::Bool(_) => ColumnType::Bool,
            Value::Str(_) => ColumnType::Str,
            Value::Bytes(_) => ColumnType::Bytes,
        }
    }

    /// Approximate size in memory, to bound how much a Parquet row group buffers.
    pub fn weight(&self) -> usize {
        match self {
            Value::Str(s) => s.len() + 8,
            Value::Bytes(b) => b.len() + 8,
            _ => 8,
        }
    }
}

/// A table's name (the Parquet schema's message name) and columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schema {
    pub name: &'static str,
    pub columns: Vec<(&'static str, ColumnType)>,
}

pub type Record = Vec<Value>;

impl Schema {
    /// Checks that a record has the schema's shape: a bug here would write a corrupt file.
    pub fn check(&self, record: &Record) -> anyhow::Result<()> {
        if record.len() != self.columns.len() {
            anyhow::bail!("internal error: a {} record has {} values for {} columns", self.name, record.len(), self.columns.len());
        }
        for ((name, ty), v) in self.columns.iter().zip(record) {
            if v.column_type() != *ty {
                anyhow::bail!("internal error: column {name} of {} is {ty:?}, got {v:?}", self.name);
            }
        }
        Ok(())
    }
}
