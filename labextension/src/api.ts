/**
 * Calls to the node's REST API (`/api/mesh/*`). A failure raises {@link MeshAPIError} with
 * the server's own message, so that the UI can show it as it is.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { errorMessage } from './state';

/** A failed call: `message` is readable, `status` the HTTP status (0: no answer). */
export class MeshAPIError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
    this.name = 'MeshAPIError';
  }
}

/**
 * Call `/api/mesh/<endpoint>` and return its JSON answer (null for 204).
 *
 * @throws MeshAPIError with the server's message, or a network error's.
 */
export async function requestAPI<T>(
  endpoint: string,
  init: RequestInit = {},
  query: Record<string, string> = {}
): Promise<T> {
  const settings = ServerConnection.makeSettings();
  const params = new URLSearchParams(query).toString();
  const url =
    URLExt.join(settings.baseUrl, 'api', 'mesh', endpoint) + (params ? `?${params}` : '');
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(url, init, settings);
  } catch (error) {
    throw new MeshAPIError(
      `Cannot reach this site's server: ${(error as Error).message ?? error}`,
      0
    );
  }
  const text = await response.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : null;
  } catch {
    // Not JSON (a proxy's error page): the text is the message.
  }
  if (!response.ok) {
    throw new MeshAPIError(
      errorMessage(response.status, body, response.statusText || 'Request failed'),
      response.status
    );
  }
  return body as T;
}

/** POST a JSON body. */
export function postAPI<T>(endpoint: string, body: unknown): Promise<T> {
  return requestAPI<T>(endpoint, { method: 'POST', body: JSON.stringify(body) });
}
