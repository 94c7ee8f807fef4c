-- Signing keys sealed at rest: the private key is stored encrypted under a
-- key-encryption key (KEK) that the database never sees (KEY_ENCRYPTION_KEY_FILE;
-- see controlplane/keyseal), so that reading this table is no longer enough
-- to mint tokens.
--
-- sealed_key is the keyseal form (versioned text naming the KEK, bound to
-- the row's id); kek_id repeats the KEK's id for listing and for finding
-- keys that a KEK rotation has not re-sealed yet. private_pem is the
-- plaintext form of keys made before this migration: the control plane's
-- first start with a KEK seals them and sets it to NULL. A row has exactly
-- one of the two forms.

ALTER TABLE signing_keys
	ALTER COLUMN private_pem DROP NOT NULL,
	ADD COLUMN sealed_key bytea,
	ADD COLUMN kek_id     text,
	ADD CONSTRAINT signing_keys_one_form_check CHECK ((private_pem IS NULL) <> (sealed_key IS NULL)),
	ADD CONSTRAINT signing_keys_kek_id_check CHECK ((sealed_key IS NULL) = (kek_id IS NULL));
