-- Message-IDs and thread keys come from senders and can be longer than a
-- btree entry may be (~2.7 KB): index their md5 instead, so a message with a
-- 5 KB Message-ID is stored rather than failing its insert. Look them up with
-- "md5(message_id) = md5($1) AND message_id = $1" (likewise thread_key).
DROP INDEX inbound_messages_message_id_idx;
CREATE INDEX inbound_messages_message_id_idx ON inbound_messages (tenant, account, md5(message_id))
    WHERE message_id IS NOT NULL;
DROP INDEX inbound_messages_thread_idx;
CREATE INDEX inbound_messages_thread_idx ON inbound_messages (tenant, account, md5(thread_key));
