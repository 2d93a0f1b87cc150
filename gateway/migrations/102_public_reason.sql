-- Why a saga was rejected or rolled back, in words fit for the public enrollment view: no name,
-- no e-mail, no operator detail. `reason` keeps the services' own wording for operators.
ALTER TABLE enrollments ADD COLUMN public_reason TEXT;
