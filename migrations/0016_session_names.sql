-- Session names (docs/sessions.md "Names"): what the owner calls a session ("work desktop"), optional at
-- creation and shown by the console and the viewer. Not unique: the id stays the session's identity.
-- The API checks length and characters (SessionName); the CHECK keeps other writers honest.
ALTER TABLE sessions ADD COLUMN name text
    CHECK (name IS NULL OR (char_length(name) <= 64 AND name ~ '^[A-Za-z0-9]([A-Za-z0-9 ._-]*[A-Za-z0-9._-])?$'));
