-- 015: how many of a lease's items may run at once. A claim of a type with a `concurrency`
-- limit holds some of the limit's slots and may lease more items than that, to run through
-- them one after another; the limit counts each live lease's slots, or its leased items when
-- fewer are left (claim_items.running). NULL: the lease's type has no such limit, and leases
-- made before this migration count their items, as they did.
ALTER TABLE leases ADD COLUMN slots INTEGER;
