FROM python:3.11-slim
WORKDIR /srv/mpcio
COPY pyproject.toml README.md ./
COPY app ./app
COPY agents ./agents
COPY schemas ./schemas
RUN pip install --no-cache-dir -e .
ENV MPCIO_DATA_DIR=/var/lib/mpcio MPCIO_WEB_HOST=0.0.0.0
EXPOSE 6066
ENTRYPOINT ["mpcio"]
CMD ["worker"]
