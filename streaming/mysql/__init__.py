"""A ``Source`` over a MySQL / MariaDB binary log: row events become the engine's changes.

One replication connection (``mysql-replication``'s ``BinLogStreamReader``) reads the
binary log for every watched table of one schema, in a thread of its own, so the event
loop never waits on a socket. The thread hands each committed transaction over whole; the
engine's task turns its rows into MongoDB-shaped raw changes (the ``streaming.source``
format): insert / update / delete, keyed by the primary key, with the row's before image
as ``fullDocumentBeforeChange``, so an update's diff is exactly before → after.

Positions are MariaDB GTIDs (``0-1-42``; a list when there are several domains) or, on
MySQL, binlog file + offset, always at a transaction's end, and saved only after its rows
were handed off (at-least-once, like resume tokens). A position the server no longer has
(binlog purged, server rebuilt) is history lost: the source reopens from now and every
subscriber resyncs. DDL on a watched table (ALTER, TRUNCATE, DROP, RENAME) is a resync of
that table: the binlog says nothing about the rows it changed.

The server needs ``log_bin``, ``binlog_format=ROW``, ``binlog_row_image=FULL`` and
``binlog_row_metadata=FULL``; ``start()`` says which one is missing.
"""

from streaming.mysql.positions import MySQLCheckpoints, gtid_state, gtid_text
from streaming.mysql.schema import Column, SourceError, Table, ddl_tables, read_tables
from streaming.mysql.source import MySQLSource

__all__ = ["Column", "MySQLCheckpoints", "MySQLSource", "SourceError", "Table", "ddl_tables",
           "gtid_state", "gtid_text", "read_tables"]
