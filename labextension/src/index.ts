/**
 * mesh_collab's JupyterLab plugins: the collaborators panel and status item of the current
 * document (notebook or text file), its history, and sharing (dialog, "Shared with me",
 * "Shared by me").
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { showErrorMessage } from '@jupyterlab/apputils';
import { IDefaultFileBrowser } from '@jupyterlab/filebrowser';
import { IEditorTracker } from '@jupyterlab/fileeditor';
import { INotebookTracker } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import {
  folderFavoriteIcon,
  historyIcon,
  shareIcon,
  usersIcon
} from '@jupyterlab/ui-components';

import { CollaboratorsPanel, StatusItem } from './collaborators';
import { HistoryPanel } from './history';
import { openShareDialog, SharedByMePanel, SharedWithMePanel } from './sharing';
import { checkEditor } from './unsupported';
import { DocumentWatcher } from './watcher';

/** The folder in which accepted shares appear (mesh_collab/jupyter/fileids.py). */
const SHARED_FOLDER = 'Shared with me';

namespace CommandIDs {
  export const share = 'mesh:share';
  export const history = 'mesh:show-history';
  export const collaborators = 'mesh:show-collaborators';
}

const documentPlugin: JupyterFrontEndPlugin<void> = {
  id: 'mesh-collab:document',
  description: 'Collaborators, state and history of the current notebook or text file.',
  autoStart: true,
  requires: [ILabShell],
  optional: [INotebookTracker, IEditorTracker, IStatusBar],
  activate: (
    app: JupyterFrontEnd,
    shell: ILabShell,
    notebooks: INotebookTracker | null,
    editors: IEditorTracker | null,
    statusBar: IStatusBar | null
  ) => {
    const watcher = new DocumentWatcher({ shell, notebooks, editors });
    // A binary or oversized file gets the node's reason instead of an endless "loading".
    editors?.widgetAdded.connect((_, widget) => void checkEditor(widget));
    const collaborators = new CollaboratorsPanel(watcher);
    collaborators.title.icon = usersIcon;
    shell.add(collaborators, 'right', { rank: 50 });
    const history = new HistoryPanel(watcher);
    history.title.icon = historyIcon;
    shell.add(history, 'right', { rank: 60 });

    app.commands.addCommand(CommandIDs.history, {
      label: 'Show History',
      execute: () => shell.activateById(history.id)
    });
    app.commands.addCommand(CommandIDs.collaborators, {
      label: 'Show Collaborators',
      execute: () => shell.activateById(collaborators.id)
    });
    if (statusBar) {
      const item = new StatusItem(watcher, () => shell.activateById(collaborators.id));
      statusBar.registerStatusItem('mesh-collab:status', {
        item,
        align: 'left',
        rank: 5
      });
    }
  }
};

const sharingPlugin: JupyterFrontEndPlugin<void> = {
  id: 'mesh-collab:sharing',
  description: 'Share files with users of this site and other mesh sites; shares panels.',
  autoStart: true,
  requires: [ILabShell, IDefaultFileBrowser],
  activate: (app: JupyterFrontEnd, shell: ILabShell, browser: IDefaultFileBrowser) => {
    app.commands.addCommand(CommandIDs.share, {
      label: 'Share…',
      caption: 'Share with people at this site or other sites of the mesh',
      icon: shareIcon,
      isVisible: () => {
        const item = browser.selectedItems().next();
        return !item.done && !item.value.path.startsWith(SHARED_FOLDER);
      },
      execute: async args => {
        const path =
          (args.path as string | undefined) ?? browser.selectedItems().next().value?.path;
        if (!path) {
          return;
        }
        try {
          await openShareDialog(path);
        } catch (error) {
          await showErrorMessage('Sharing failed', error as Error);
        }
      }
    });
    app.contextMenu.addItem({
      command: CommandIDs.share,
      selector: '.jp-DirListing-item[data-isdir]',
      rank: 3
    });

    const withMe = new SharedWithMePanel(name => {
      void app.commands.execute('docmanager:open', { path: `${SHARED_FOLDER}/${name}` });
    });
    withMe.title.icon = folderFavoriteIcon;
    shell.add(withMe, 'left', { rank: 150 });
    const byMe = new SharedByMePanel();
    byMe.title.icon = shareIcon;
    shell.add(byMe, 'left', { rank: 151 });
  }
};

export default [documentPlugin, sharingPlugin];
