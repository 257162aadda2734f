/**
 * A file the node cannot co-edit as text (binary, too large, or open as a notebook) gets no
 * room: the node answers the document session with 415 and the reason. The stock provider
 * would only report "The document is taking some time to load"; this plugin asks the same
 * question when a file editor opens, and on a 415 shows the node's reason and closes the tab.
 */
import { showErrorMessage } from '@jupyterlab/apputils';
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** What this check needs of a file editor's document widget. */
export interface IOpenedFile {
  readonly context: { readonly path: string };
  readonly isDisposed: boolean;
  dispose(): void;
}

/** The node's reason when it cannot open `path` as a text document, else null. */
export async function refusedReason(path: string): Promise<string | null> {
  const settings = ServerConnection.makeSettings();
  const url = URLExt.join(
    settings.baseUrl,
    'api/collaboration/session',
    encodeURIComponent(path)
  );
  let response: Response;
  try {
    response = await ServerConnection.makeRequest(
      url,
      { method: 'PUT', body: JSON.stringify({ format: 'text', type: 'file' }) },
      settings
    );
  } catch {
    return null; // no answer: the provider reports its own connection state
  }
  if (response.status !== 415) {
    return null;
  }
  try {
    const body = (await response.json()) as { message?: string };
    return body.message || `${path} cannot be edited here`;
  } catch {
    return `${path} cannot be edited here`;
  }
}

/** Check a newly opened file editor; close it with the node's reason if refused. */
export async function checkEditor(widget: IOpenedFile): Promise<void> {
  const path = widget.context.path;
  const reason = await refusedReason(path);
  if (reason !== null && !widget.isDisposed) {
    widget.dispose();
    await showErrorMessage(`Cannot open ${path}`, reason);
  }
}
