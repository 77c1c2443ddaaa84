-- lth control-plane schema (SQLite, the embedded single-machine store). The same tables as the
-- Postgres schema; times are ISO-8601 UTC text from SQLite's clock, masks are BLOBs (MSB-first).

CREATE TABLE sweeps (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    client_token  TEXT UNIQUE,
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,               -- JSON
    state         TEXT NOT NULL CHECK (state IN ('running', 'paused', 'cancelled', 'succeeded', 'failed')),
    priority      INTEGER NOT NULL DEFAULT 0,
    max_attempts  INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at   TEXT
);

CREATE TABLE trials (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id      INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    metric        TEXT NOT NULL,
    rate          REAL NOT NULL,
    seed          INTEGER NOT NULL,
    levels        INTEGER NOT NULL,
    dense_job_id  INTEGER REFERENCES jobs(id),
    state         TEXT NOT NULL CHECK (state IN ('running', 'succeeded', 'failed', 'cancelled')),
    UNIQUE (sweep_id, metric, rate, seed)
);

CREATE TABLE jobs (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id         INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial_id         INTEGER REFERENCES trials(id) ON DELETE CASCADE,
    kind             TEXT NOT NULL CHECK (kind IN ('dense', 'level')),
    seed             INTEGER NOT NULL,
    metric           TEXT,
    rate             REAL NOT NULL DEFAULT 0,
    level            INTEGER NOT NULL,
    parent_job_id    INTEGER REFERENCES jobs(id),
    dense_job_id     INTEGER REFERENCES jobs(id),
    state            TEXT NOT NULL CHECK (state IN ('blocked', 'ready', 'running', 'succeeded', 'failed', 'cancelled')),
    paused           BOOLEAN NOT NULL DEFAULT 0,
    priority         INTEGER NOT NULL DEFAULT 0,
    attempt          INTEGER NOT NULL DEFAULT 0,
    max_attempts     INTEGER NOT NULL,
    lease_expires_at TEXT,
    worker_id        TEXT,
    error_count      INTEGER NOT NULL DEFAULT 0,
    lost_count       INTEGER NOT NULL DEFAULT 0,
    last_error       TEXT,
    content_hash     TEXT NOT NULL,
    reused_from      INTEGER REFERENCES jobs(id),
    progress         REAL NOT NULL DEFAULT 0,
    eta_seconds      REAL,
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at       TEXT,
    finished_at      TEXT
);
CREATE INDEX jobs_claimable ON jobs (priority DESC, id) WHERE state = 'ready' AND NOT paused;
CREATE INDEX jobs_running_lease ON jobs (lease_expires_at) WHERE state = 'running';
CREATE INDEX jobs_open_by_sweep ON jobs (sweep_id) WHERE state IN ('blocked', 'ready', 'running');
CREATE INDEX jobs_by_sweep ON jobs (sweep_id, id);
CREATE INDEX jobs_by_parent ON jobs (parent_job_id);
CREATE INDEX jobs_by_trial ON jobs (trial_id, level);
CREATE INDEX jobs_succeeded_hash ON jobs (content_hash) WHERE state = 'succeeded';

CREATE TABLE job_attempts (
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt     INTEGER NOT NULL,
    worker_id   TEXT NOT NULL,
    started_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    finished_at TEXT,
    outcome     TEXT NOT NULL CHECK (outcome IN ('running', 'succeeded', 'failed', 'lost', 'aborted')),
    error       TEXT,
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE level_results (
    job_id        INTEGER PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
    sparsity      REAL NOT NULL,
    test_accuracy REAL NOT NULL,
    test_loss     REAL NOT NULL,
    train_loss    REAL NOT NULL,
    epochs        REAL NOT NULL,
    wall_seconds  REAL NOT NULL,
    iterations    INTEGER NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE masks (
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    layer       TEXT NOT NULL,
    ordinal     INTEGER NOT NULL,
    kept        INTEGER NOT NULL,
    total       INTEGER NOT NULL,
    bits        BLOB NOT NULL,                 -- ceil(total/8) bytes, MSB-first, padding bits zero
    collapsed   BOOLEAN NOT NULL,
    weight_norm REAL NOT NULL,
    PRIMARY KEY (job_id, layer),
    CHECK (kept >= 0 AND kept <= total AND length(bits) = (total + 7) / 8)
);

CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    sweep_id    INTEGER NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    job_id      INTEGER REFERENCES jobs(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL,
    job_state   TEXT,
    attempt     INTEGER,
    progress    REAL,
    detail      TEXT,
    at          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX events_by_sweep ON events (sweep_id, id);

CREATE TABLE workers (
    worker_id        TEXT PRIMARY KEY,
    host             TEXT NOT NULL,
    gpus             TEXT NOT NULL DEFAULT '[]',
    cpus             INTEGER NOT NULL DEFAULT 0,
    slots            INTEGER NOT NULL DEFAULT 0,
    libtorch_version TEXT NOT NULL DEFAULT '',
    cuda_version     TEXT NOT NULL DEFAULT '',
    registered_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE artifacts (
    job_id      INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    uri         TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    bytes       INTEGER NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (job_id, name)
);
