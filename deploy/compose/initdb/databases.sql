-- Run by the postgres image on its first start (an empty volume): MLflow's and Prefect's databases beside supportflow's.
CREATE DATABASE mlflow;
CREATE DATABASE prefect;
CREATE DATABASE rasa;
