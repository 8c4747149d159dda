"""The run state's schema history: ordered, numbered migrations, applied once each at startup.

A migration that has shipped is never edited or renumbered; fixes come as new migrations.
Applied names are recorded in ``_daydream_migrations``. Each migration runs in its own
transaction, so a crash mid-upgrade leaves the database at the previous version.
"""

from __future__ import annotations

import aiosqlite

M001_INITIAL = """
        CREATE TABLE generations (
            gen_id        TEXT PRIMARY KEY,
            stage         TEXT NOT NULL,
            stage_rank    INTEGER NOT NULL,            -- 0 draft, 1 essay, 2 evaluation: parents first
            parent_gen_id TEXT NOT NULL,               -- '' for drafts
            combo_id      TEXT NOT NULL,
            template_id   TEXT NOT NULL,
            llm_model_id  TEXT NOT NULL,
            replicate     INTEGER NOT NULL,
            mode          TEXT NOT NULL,               -- llm | copy
            state         TEXT NOT NULL,               -- pending | queued | running | done | failed
            retired       INTEGER NOT NULL DEFAULT 0,  -- 1 when not in the current cohort
            attempts      INTEGER NOT NULL DEFAULT 0,
            error_kind    TEXT,
            error_message TEXT,
            approval_id   INTEGER,
            lease_token   INTEGER NOT NULL DEFAULT 0,  -- fencing: bumped by every claim
            lease_expires REAL,
            created_at    TEXT NOT NULL,
            updated_at    TEXT NOT NULL,
            started_at    TEXT,
            finished_at   TEXT
        );
        CREATE INDEX generations_ready ON generations (state, retired, stage_rank, llm_model_id);
        CREATE INDEX generations_parent ON generations (parent_gen_id);
        CREATE INDEX generations_counts ON generations (stage, state, retired);

        CREATE TABLE attempts (
            id                INTEGER PRIMARY KEY,
            gen_id            TEXT NOT NULL,
            llm_model_id      TEXT NOT NULL,
            attempt           INTEGER NOT NULL,
            started_at        REAL NOT NULL,
            finished_at       REAL NOT NULL,
            outcome           TEXT NOT NULL,           -- ok or a failure kind
            status            INTEGER,
            message           TEXT,
            prompt_tokens     INTEGER,
            completion_tokens INTEGER,
            total_tokens      INTEGER,
            reasoning_tokens  INTEGER,
            cost              REAL
        );
        CREATE INDEX attempts_gen ON attempts (gen_id);

        CREATE TABLE approvals (
            id            INTEGER PRIMARY KEY,
            created_at    TEXT NOT NULL,
            requested_by  TEXT NOT NULL,
            action        TEXT NOT NULL,               -- approve | revoke
            cohort_id     TEXT,
            stage         TEXT NOT NULL,
            template_id   TEXT,
            llm_model_id  TEXT,
            limit_n       INTEGER,
            matched       INTEGER NOT NULL
        );

        CREATE TABLE cohorts (
            cohort_id    TEXT PRIMARY KEY,
            first_seen   TEXT NOT NULL,
            last_applied TEXT NOT NULL,
            fingerprint  TEXT NOT NULL,
            counts       TEXT NOT NULL                 -- JSON {stage: n}
        );

        CREATE TABLE facts (
            key   TEXT PRIMARY KEY,                    -- e.g. fingerprint.pending, fingerprint.applied
            value TEXT NOT NULL
        );

        CREATE TABLE model_limits (
            llm_model_id TEXT PRIMARY KEY,
            concurrency  REAL NOT NULL,
            updated_at   TEXT NOT NULL
        );
"""

M002_SCORES = """
        ALTER TABLE generations ADD COLUMN score REAL;   -- an evaluation's parsed score, when done
        CREATE INDEX generations_scores ON generations (stage, state) WHERE score IS NOT NULL;
"""

M003_OPERATIONS = """
        ALTER TABLE approvals ADD COLUMN budget_usd REAL;   -- stop starting calls past this spend
        ALTER TABLE approvals ADD COLUMN plan TEXT;         -- the plan hash the approval was checked against
        ALTER TABLE generations ADD COLUMN fresh INTEGER NOT NULL DEFAULT 0;  -- 1: pay for a new reply
        CREATE INDEX generations_approval ON generations (approval_id);
"""

M004_PARSE = """
        ALTER TABLE generations ADD COLUMN parse_key TEXT;   -- what parsed.txt depends on: parser@version (+ label, scale)
        ALTER TABLE generations ADD COLUMN parse_info TEXT;  -- JSON: how it was parsed (the score's line, what was set aside)
        ALTER TABLE generations ADD COLUMN parent_changed INTEGER NOT NULL DEFAULT 0;  -- 1: its parent's parsed text changed since
        CREATE INDEX generations_template ON generations (stage, template_id);
        CREATE INDEX generations_parent_changed ON generations (stage) WHERE parent_changed = 1 AND retired = 0;
        CREATE TABLE template_parse_keys (                   -- the parse key last applied to each template's generations
            stage       TEXT NOT NULL,
            template_id TEXT NOT NULL,
            parse_key   TEXT NOT NULL,
            PRIMARY KEY (stage, template_id)
        );
        CREATE TABLE parse_history (                         -- every re-parse that changed a generation, old and new
            id          INTEGER PRIMARY KEY,
            gen_id      TEXT NOT NULL,
            at          TEXT NOT NULL,
            old_key     TEXT,
            new_key     TEXT NOT NULL,
            old_state   TEXT NOT NULL,
            new_state   TEXT NOT NULL,
            old_parsed  TEXT,
            new_parsed  TEXT,
            old_score   REAL,
            new_score   REAL,
            reason      TEXT NOT NULL
        );
        CREATE INDEX parse_history_gen ON parse_history (gen_id);
"""

M005_ATTEMPT_TIMES = """
        CREATE INDEX attempts_finished ON attempts (finished_at);  -- requests of the last minute (rate windows at startup), recent errors
"""

M006_LAST_GOOD_RAW = """
        CREATE TABLE last_good_raw (                         -- the files of 1_raw that last built a cohort (facts: raw.last_good, their fingerprint)
            path TEXT PRIMARY KEY,                           -- relative to 1_raw, POSIX
            data BLOB NOT NULL
        );
"""

M007_READY_BY_MODEL = """
        CREATE INDEX generations_ready_by_model                -- the scheduler's look-up: ready work of one (mode, model), parents first
            ON generations (mode, llm_model_id, stage_rank) WHERE state = 'queued' AND retired = 0;
"""

M008_COUNTS = """
        CREATE TABLE generation_counts (                     -- generations per key, kept exact as below
            stage        TEXT NOT NULL,
            state        TEXT NOT NULL,
            retired      INTEGER NOT NULL,
            llm_model_id TEXT NOT NULL,
            mode         TEXT NOT NULL,
            n            INTEGER NOT NULL,
            PRIMARY KEY (stage, state, retired, llm_model_id, mode)
        ) WITHOUT ROWID;
        INSERT INTO generation_counts (stage, state, retired, llm_model_id, mode, n)
            SELECT stage, state, retired, llm_model_id, mode, count(*) FROM generations
            GROUP BY stage, state, retired, llm_model_id, mode;
        -- State changes, one row at a time on the pool's hot path, are counted by this trigger.
        -- Membership changes (new rows, retired and revived ones) come in bulk from the membership
        -- sync, which counts them itself set-wise in the same transaction: a trigger per row would
        -- triple what a rebuild costs.
        CREATE TRIGGER generation_counts_state AFTER UPDATE OF state ON generations
            WHEN old.state IS NOT new.state
        BEGIN
            INSERT INTO generation_counts (stage, state, retired, llm_model_id, mode, n)
                VALUES (old.stage, old.state, old.retired, old.llm_model_id, old.mode, -1),
                       (new.stage, new.state, new.retired, new.llm_model_id, new.mode, 1)
                ON CONFLICT DO UPDATE SET n = n + excluded.n;
        END;
        -- the listings (GET /v1/generations) in their order (stage_rank, rowid), without sorting the table:
        -- by state (and stage), by stage or none, retired ones (by stage)
        CREATE INDEX generations_listing ON generations (state, retired, stage_rank);
        CREATE INDEX generations_rank ON generations (stage_rank);
        CREATE INDEX generations_retired ON generations (stage_rank) WHERE retired = 1;
        -- failures by stage and kind (status), read from the index alone
        CREATE INDEX generations_failed ON generations (stage, error_kind) WHERE state = 'failed' AND retired = 0;
"""

M009_NAMED_COHORTS = """
        -- Many cohorts, one run state: the default cohort (the spec in 1_raw) and named ones (a spec
        -- folder each, e.g. rejudge-top5) share the generations table, so work done for one is done
        -- for all. in_default marks the default cohort's members; cohort_members the named ones'.
        -- retired keeps its meaning (the pool runs only retired = 0, generation_counts keys on it):
        -- retired = 1 exactly when no cohort holds the row (in_default = 0 and no cohort_members row).
        -- Until now every live row was the default cohort's: in_default = 1 exactly where retired = 0.
        -- The default is 1 (a constant in the schema: no row is rewritten but the retired ones), so a
        -- row inserted with the defaults (live) is the default cohort's, as it always was.
        ALTER TABLE generations ADD COLUMN in_default INTEGER NOT NULL DEFAULT 1;
        UPDATE generations SET in_default = 0 WHERE retired = 1;
        CREATE TABLE cohort_members (
            cohort TEXT NOT NULL,                            -- a named cohort (named_cohorts.name)
            gen_id TEXT NOT NULL,
            PRIMARY KEY (cohort, gen_id)
        ) WITHOUT ROWID;
        CREATE INDEX cohort_members_gen ON cohort_members (gen_id);  -- does another cohort still hold it?
        CREATE TABLE named_cohorts (
            name         TEXT PRIMARY KEY,
            key          TEXT NOT NULL,                      -- what its membership was synced from (the spec's key)
            first_seen   TEXT NOT NULL,
            last_applied TEXT NOT NULL,
            counts       TEXT NOT NULL                       -- JSON {stage: n}
        );
        -- the live rows outside the default cohort (few: those only named cohorts hold), read from the
        -- index alone: the default cohort's counts are generation_counts' live ones minus these
        CREATE INDEX generations_outside_default ON generations (stage, state, llm_model_id, mode, error_kind)
            WHERE retired = 0 AND in_default = 0;
"""

M010_BATCHES = """
        -- Batch mode: work sent through a provider's Batch API. A generation in a batch is 'running'
        -- with mode 'batch' from the moment it joins one until its result is committed; the batch
        -- (not the pool) owns it, so restarts leave it alone. Each batch and its members are recorded
        -- before anything is uploaded, and its tag goes to the provider with it: after a crash in the
        -- middle of a submission the batch is found by its tag, never submitted twice.
        CREATE TABLE batches (
            id             INTEGER PRIMARY KEY,
            tag            TEXT NOT NULL UNIQUE,     -- sent as the batch's metadata
            endpoint       TEXT NOT NULL,
            llm_model_id   TEXT NOT NULL,
            stage          TEXT NOT NULL,
            state          TEXT NOT NULL,            -- preparing | submitting | submitted | collecting | closed
            remote_state   TEXT,                     -- the provider's status (validating, in_progress, completed, expired...)
            input_file_id  TEXT,
            remote_id      TEXT,                     -- the provider's batch id
            output_file_id TEXT,
            error_file_id  TEXT,
            requests       INTEGER NOT NULL,
            completed      INTEGER NOT NULL DEFAULT 0,
            failed         INTEGER NOT NULL DEFAULT 0,
            price_factor   REAL NOT NULL,            -- the batch price as a share of the online one
            message        TEXT,
            created_at     TEXT NOT NULL,
            submitted_at   TEXT,
            polled_at      TEXT,
            closed_at      TEXT
        );
        CREATE INDEX batches_open ON batches (state) WHERE state != 'closed';
        CREATE TABLE batch_members (
            batch_id INTEGER NOT NULL,
            gen_id   TEXT NOT NULL,
            token    INTEGER NOT NULL,                -- the claim's lease token: its completion is fenced by it
            PRIMARY KEY (batch_id, gen_id)
        ) WITHOUT ROWID;
        CREATE INDEX batch_members_gen ON batch_members (gen_id);
"""

M011_FEWER_INDEXES = """
        -- Every write of a row maintains every index over the columns it changes: an approval of a
        -- million rows, a rebuild's inserts and retirements paid for two indexes no statement needs.
        -- generations_ready (state, retired, stage_rank, llm_model_id) extends generations_listing
        -- (state, retired, stage_rank): an approval scoped to a model now walks the listing index
        -- and checks the model on each row, which costs less than keeping the wider index current
        -- (the scheduler's look-up is generations_ready_by_model's). generations_counts (stage,
        -- state, retired) served counts that generation_counts now keeps, and the results' read of
        -- the finished evaluations, which takes generations_template (stage) instead.
        DROP INDEX generations_ready;
        DROP INDEX generations_counts;
"""

M012_PARTIAL_INDEXES = """
        -- A rebuild that edits one template inserts (and retires) hundreds of thousands of rows in
        -- chunks. gen_ids and parent ids are hashes, so each chunk's inserts land all over the gen_id
        -- and parent indexes: two indexes' worth of pages dirtied, written to the WAL at every commit
        -- and checkpointed back. The parent index serves one statement only, the re-parse marking the
        -- finished children of a changed parent (parse_state: parent_gen_id = ? AND state IN ('done',
        -- 'failed'), the exact term the planner matches), so it need only hold finished rows: new
        -- (pending) rows and retirements never touch it, a completion adds one entry. Likewise
        -- approval_id is only ever looked up by value (= or IN), which implies NOT NULL, and every new
        -- row has none. (Measured on a 1.3M-row state: the inserts of a one-template edit take about
        -- 40 % less time.)
        DROP INDEX generations_parent;
        CREATE INDEX generations_parent_finished ON generations (parent_gen_id) WHERE state IN ('done', 'failed');
        DROP INDEX generations_approval;
        CREATE INDEX generations_approved ON generations (approval_id) WHERE approval_id IS NOT NULL;
"""

MIGRATIONS: tuple[tuple[str, str], ...] = (
    ("m001_initial", M001_INITIAL),
    ("m002_scores", M002_SCORES),
    ("m003_operations", M003_OPERATIONS),
    ("m004_parse", M004_PARSE),
    ("m005_attempt_times", M005_ATTEMPT_TIMES),
    ("m006_last_good_raw", M006_LAST_GOOD_RAW),
    ("m007_ready_by_model", M007_READY_BY_MODEL),
    ("m008_counts", M008_COUNTS),
    ("m009_named_cohorts", M009_NAMED_COHORTS),
    ("m010_batches", M010_BATCHES),
    ("m011_fewer_indexes", M011_FEWER_INDEXES),
    ("m012_partial_indexes", M012_PARTIAL_INDEXES),
)
"""(name, SQL script) in order. Append only."""


async def migrate(db: aiosqlite.Connection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now.

    The connection must be in autocommit mode (``isolation_level=None``): each script runs
    inside its own ``BEGIN IMMEDIATE ... COMMIT`` together with the row that records it.
    """
    await db.execute(
        "CREATE TABLE IF NOT EXISTS _daydream_migrations (name TEXT PRIMARY KEY, applied_at TEXT)"
    )
    async with db.execute("SELECT name FROM _daydream_migrations") as cursor:
        done = {row[0] for row in await cursor.fetchall()}
    applied = []
    for name, script in MIGRATIONS:
        if name in done:
            continue
        record = f"INSERT INTO _daydream_migrations VALUES ('{name}', strftime('%Y-%m-%dT%H:%M:%fZ'));"
        try:
            await db.executescript(f"BEGIN IMMEDIATE;\n{script}\n{record}\nCOMMIT;")
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise
        applied.append(name)
    return applied
