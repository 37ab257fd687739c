-- inboundctl trace finds a message by the job id in a log line: the ledger
-- row records the job that claimed it last.
CREATE INDEX inbound_ledger_job_idx ON inbound_ledger (job_id);
