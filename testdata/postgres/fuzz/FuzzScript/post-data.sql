--
-- PostgreSQL database dump
--

\restrict A0PVCTY0CvCj8cjFNrweZKp1s515gzHPdfffx9Cb6emdFNvzT8sT8t61Z0e1Uo7

-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

--
-- Name: pages pages_pkey; Type: CONSTRAINT; Schema: appsmith; Owner: postgres
--

ALTER TABLE ONLY appsmith.pages
    ADD CONSTRAINT pages_pkey PRIMARY KEY (id);


--
-- Name: users users_email_key; Type: CONSTRAINT; Schema: appsmith; Owner: fixture_owner
--

ALTER TABLE ONLY appsmith.users
    ADD CONSTRAINT users_email_key UNIQUE (email);


--
-- Name: users users_pkey; Type: CONSTRAINT; Schema: appsmith; Owner: fixture_owner
--

ALTER TABLE ONLY appsmith.users
    ADD CONSTRAINT users_pkey PRIMARY KEY (id);


--
-- Name: cache cache_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.cache
    ADD CONSTRAINT cache_pkey PRIMARY KEY (k);


--
-- Name: client client_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.client
    ADD CONSTRAINT client_pkey PRIMARY KEY (id);


--
-- Name: empty empty_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.empty
    ADD CONSTRAINT empty_pkey PRIMARY KEY (id);


--
-- Name: realm realm_name_key; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.realm
    ADD CONSTRAINT realm_name_key UNIQUE (name);


--
-- Name: realm realm_pkey; Type: CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.realm
    ADD CONSTRAINT realm_pkey PRIMARY KEY (id);


--
-- Name: events events_pkey; Type: CONSTRAINT; Schema: temporal; Owner: postgres
--

ALTER TABLE ONLY temporal.events
    ADD CONSTRAINT events_pkey PRIMARY KEY (id);


--
-- Name: history history_pkey; Type: CONSTRAINT; Schema: temporal; Owner: postgres
--

ALTER TABLE ONLY temporal.history
    ADD CONSTRAINT history_pkey PRIMARY KEY (shard, event_id);


--
-- Name: history_0 history_0_pkey; Type: CONSTRAINT; Schema: temporal; Owner: postgres
--

ALTER TABLE ONLY temporal.history_0
    ADD CONSTRAINT history_0_pkey PRIMARY KEY (shard, event_id);


--
-- Name: history_1 history_1_pkey; Type: CONSTRAINT; Schema: temporal; Owner: postgres
--

ALTER TABLE ONLY temporal.history_1
    ADD CONSTRAINT history_1_pkey PRIMARY KEY (shard, event_id);


--
-- Name: tasks tasks_pkey; Type: CONSTRAINT; Schema: temporal; Owner: postgres
--

ALTER TABLE ONLY temporal.tasks
    ADD CONSTRAINT tasks_pkey PRIMARY KEY (id);


--
-- Name: page_counts_owner; Type: INDEX; Schema: appsmith; Owner: postgres
--

CREATE UNIQUE INDEX page_counts_owner ON appsmith.page_counts USING btree (owner);


--
-- Name: pages_body; Type: INDEX; Schema: appsmith; Owner: postgres
--

CREATE INDEX pages_body ON appsmith.pages USING gin (body);


--
-- Name: pages_owner_title; Type: INDEX; Schema: appsmith; Owner: postgres
--

CREATE INDEX pages_owner_title ON appsmith.pages USING btree (owner, title);


--
-- Name: events_shard_at; Type: INDEX; Schema: temporal; Owner: postgres
--

CREATE INDEX events_shard_at ON temporal.events USING btree (shard, at);


--
-- Name: history_created; Type: INDEX; Schema: temporal; Owner: postgres
--

CREATE INDEX history_created ON ONLY temporal.history USING btree (created);


--
-- Name: history_0_created_idx; Type: INDEX; Schema: temporal; Owner: postgres
--

CREATE INDEX history_0_created_idx ON temporal.history_0 USING btree (created);


--
-- Name: history_1_created_idx; Type: INDEX; Schema: temporal; Owner: postgres
--

CREATE INDEX history_1_created_idx ON temporal.history_1 USING btree (created);


--
-- Name: history_0_created_idx; Type: INDEX ATTACH; Schema: temporal; Owner: postgres
--

ALTER INDEX temporal.history_created ATTACH PARTITION temporal.history_0_created_idx;


--
-- Name: history_0_pkey; Type: INDEX ATTACH; Schema: temporal; Owner: postgres
--

ALTER INDEX temporal.history_pkey ATTACH PARTITION temporal.history_0_pkey;


--
-- Name: history_1_created_idx; Type: INDEX ATTACH; Schema: temporal; Owner: postgres
--

ALTER INDEX temporal.history_created ATTACH PARTITION temporal.history_1_created_idx;


--
-- Name: history_1_pkey; Type: INDEX ATTACH; Schema: temporal; Owner: postgres
--

ALTER INDEX temporal.history_pkey ATTACH PARTITION temporal.history_1_pkey;


--
-- Name: pages pages_touch; Type: TRIGGER; Schema: appsmith; Owner: postgres
--

CREATE TRIGGER pages_touch BEFORE UPDATE ON appsmith.pages FOR EACH ROW EXECUTE FUNCTION appsmith.touch();


--
-- Name: pages pages_owner_fkey; Type: FK CONSTRAINT; Schema: appsmith; Owner: postgres
--

ALTER TABLE ONLY appsmith.pages
    ADD CONSTRAINT pages_owner_fkey FOREIGN KEY (owner) REFERENCES appsmith.users(id) ON DELETE CASCADE;


--
-- Name: client client_realm_id_fkey; Type: FK CONSTRAINT; Schema: public; Owner: postgres
--

ALTER TABLE ONLY public.client
    ADD CONSTRAINT client_realm_id_fkey FOREIGN KEY (realm_id) REFERENCES public.realm(id) DEFERRABLE INITIALLY DEFERRED;


--
-- Name: page_counts; Type: MATERIALIZED VIEW DATA; Schema: appsmith; Owner: postgres
--

REFRESH MATERIALIZED VIEW appsmith.page_counts;


--
-- Name: page_totals; Type: MATERIALIZED VIEW DATA; Schema: appsmith; Owner: postgres
--

REFRESH MATERIALIZED VIEW appsmith.page_totals;


--
-- PostgreSQL database dump complete
--

\unrestrict A0PVCTY0CvCj8cjFNrweZKp1s515gzHPdfffx9Cb6emdFNvzT8sT8t61Z0e1Uo7

