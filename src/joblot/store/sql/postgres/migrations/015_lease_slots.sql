-- 015: how many of a lease's items may run at once. Same column and meaning as the SQLite 015.
ALTER TABLE leases ADD COLUMN slots integer;
