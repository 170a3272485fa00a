-- Run once by the postgres image on an empty data volume (docker-compose.yml, service postgres):
-- the ledger's database is POSTGRES_DB; Orthanc's index gets its own database.
CREATE DATABASE neuroradix_orthanc OWNER neuroradix;
