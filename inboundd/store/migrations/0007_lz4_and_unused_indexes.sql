-- Storage costs per message, measured by bench/processing.py.
--
-- 1. lz4 instead of pglz for the large columns (PostgreSQL 14+ built with lz4,
--    as Debian's and the PGDG packages are): several times faster to compress
--    and decompress at a similar ratio, and it gives up quickly on attachments
--    that are compressed already (PDF, images, archives). Rows written before
--    keep their pglz values; both are read transparently. A server without lz4
--    keeps pglz: the migration still succeeds (a NOTICE says so).
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 140000 THEN
        BEGIN
            EXECUTE 'ALTER TABLE inbound_messages'
                ' ALTER COLUMN text_body SET COMPRESSION lz4,'
                ' ALTER COLUMN html_body SET COMPRESSION lz4,'
                ' ALTER COLUMN headers SET COMPRESSION lz4,'
                ' ALTER COLUMN raw SET COMPRESSION lz4';
            EXECUTE 'ALTER TABLE inbound_attachments ALTER COLUMN data SET COMPRESSION lz4';
        EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
            RAISE NOTICE 'inboundd: this PostgreSQL has no lz4; the columns keep pglz';
        END;
    END IF;
END
$$;

-- 2. Indexes no query of inboundd uses, each one more write per stored
--    message. What uses each index that stays:
--    * inbound_messages_pkey (id): the ledger's and attachments' foreign keys,
--      messages.get_message;
--    * inbound_messages_identity_key (tenant, account, identity): the store's
--      last line against a second copy of one identity (exactly once), and
--      lookup.stored (inboundctl trace);
--    * inbound_messages_message_id_idx (tenant, account, md5(message_id)):
--      messages.find_by_message_id, the Message-ID dedupe of every store, and
--      lookup.keys_for_message_id;
--    * inbound_messages_received_idx (tenant, account, received_at):
--      lookup.recent (inboundctl messages);
--    * inbound_attachments_position_key (message_id, position):
--      messages.attachments, the attachment counts of lookup, and the cascade
--      when a message is deleted;
--    * inbound_ledger_pkey (tenant, account, identity): every claim, hold,
--      finish and fail, and lookup.ledger_rows;
--    * inbound_ledger_open_idx (status, updated_at) for processing/failed rows:
--      the lease renewal and the take-back of a dead life's claims
--      (status = 'processing' …), and operators looking for stuck rows;
--    * inbound_ledger_message_idx (message_id): lookup.keys_for_message_id
--      (the duplicates recorded against a message), and the ON DELETE SET
--      NULL of the ledger's foreign key when a message is deleted;
--    * inbound_ledger_job_idx (job_id): lookup.keys_for_job (inboundctl trace).
--    Applications that look messages up by thread can create the index they
--    need (CREATE INDEX CONCURRENTLY … ON inbound_messages (tenant, account,
--    md5(thread_key))).
DROP INDEX IF EXISTS inbound_messages_thread_idx;
DROP INDEX IF EXISTS inbound_attachments_sha256_idx;
