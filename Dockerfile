FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend backend
COPY streaming streaming
COPY seed seed
COPY loadtest loadtest
COPY changecast_client changecast_client
COPY frontend frontend
RUN pip install --no-cache-dir .
RUN useradd --create-home changecast && mkdir -p /data && chown changecast /data
USER changecast
EXPOSE 8000
CMD ["changecast", "serve"]
